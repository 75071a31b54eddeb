// The synthetic heterogeneous least-squares problem of the error-feedback example (02_synthetic_feedback) and tests
// (tests/error_feedback), in float64 with a known minimiser.
//
// f(x) = (1/n) sum_i f_i(x), f_i(x) = 0.5 ||A_i x - b_i||^2 with A_i (m x d, entries N(0, 1/m)) and b_i = A_i z_i,
// z_i = z_c + het * xi_i: worker i's own minimiser is z_i, so het = 0 is the homogeneous problem (every f_i is
// minimised at x* = z_c, grad f_i(x*) = 0) and het > 0 makes grad f_i(x*) != 0 (heterogeneity). Draws come from
// std::mt19937_64(seed) in a fixed order (z_c, then per worker A_i and xi_i). Gradients are rounded to float only
// when handed to a worker.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace gradzip::examples {

class LeastSquares {
 public:
  LeastSquares(int n, int d, int m, double het, std::uint64_t seed) : n_(n), d_(d) {
    std::mt19937_64 g(seed);
    std::normal_distribution<double> N(0.0, 1.0);
    std::vector<double> zc(d);
    for (auto& v : zc) v = N(g);
    H_.assign(static_cast<std::size_t>(d) * d, 0.0);
    std::vector<double> r(d, 0.0);
    for (int i = 0; i < n; ++i) {
      std::vector<double> A(static_cast<std::size_t>(m) * d), z(d), b(m);
      for (auto& v : A) v = N(g) / std::sqrt(static_cast<double>(m));
      for (int j = 0; j < d; ++j) z[j] = zc[j] + het * N(g);
      for (int row = 0; row < m; ++row) {
        double s = 0;
        for (int j = 0; j < d; ++j) s += A[row * d + j] * z[j];
        b[row] = s;
      }
      std::vector<double> Hi(static_cast<std::size_t>(d) * d, 0.0), ci(d, 0.0);
      for (int a = 0; a < d; ++a) {
        for (int c = 0; c < d; ++c) {
          double s = 0;
          for (int row = 0; row < m; ++row) s += A[row * d + a] * A[row * d + c];
          Hi[a * d + c] = s;
        }
        double s = 0;
        for (int row = 0; row < m; ++row) s += A[row * d + a] * b[row];
        ci[a] = s;
      }
      for (std::size_t k = 0; k < Hi.size(); ++k) H_[k] += Hi[k] / n;
      for (int a = 0; a < d; ++a) r[a] += ci[a] / n;
      Hs_.push_back(std::move(Hi));
      cs_.push_back(std::move(ci));
    }
    xs_ = cholesky_solve(H_, r, d);
    for (double v : xs_) xs_norm_ += v * v;
    xs_norm_ = std::sqrt(xs_norm_);
    L_ = top_eigenvalue(H_, d);
    gap0_ = gap(std::vector<double>(d, 0.0));
  }

  /// grad f_i(x) = H_i x - c_i, rounded to float.
  void grad(int i, const std::vector<double>& x, std::vector<float>& g) const {
    const std::vector<double>& H = Hs_[i];
    g.resize(d_);
    for (int a = 0; a < d_; ++a) {
      double s = -cs_[i][a];
      for (int c = 0; c < d_; ++c) s += H[a * d_ + c] * x[c];
      g[a] = static_cast<float>(s);
    }
  }
  /// ||x - x*|| / ||x*||.
  double rel_error(const std::vector<double>& x) const {
    double e = 0, s = 0;
    for (int j = 0; j < d_; ++j) {
      e += (x[j] - xs_[j]) * (x[j] - xs_[j]);
      s += xs_[j] * xs_[j];
    }
    return std::sqrt(e / s);
  }
  /// f(x) - f* = 0.5 (x - x*)^T H (x - x*) for the quadratic f.
  double gap(const std::vector<double>& x) const {
    double s = 0;
    for (int a = 0; a < d_; ++a) {
      double t = 0;
      for (int c = 0; c < d_; ++c) t += H_[a * d_ + c] * (x[c] - xs_[c]);
      s += (x[a] - xs_[a]) * t;
    }
    return 0.5 * s;
  }
  /// (f(x) - f*) / (f(0) - f*).
  double subopt(const std::vector<double>& x) const { return gap(x) / gap0_; }
  /// mean_i ||grad f_i(x*)|| (the heterogeneity at the optimum; 0 for het = 0 up to rounding).
  double heterogeneity() const {
    double t = 0;
    std::vector<float> g;
    for (int i = 0; i < n_; ++i) {
      grad(i, xs_, g);
      double s = 0;
      for (float v : g) s += static_cast<double>(v) * v;
      t += std::sqrt(s);
    }
    return t / n_;
  }
  const std::vector<double>& solution() const { return xs_; }
  double solution_norm() const { return xs_norm_; }
  /// L = the largest eigenvalue of H = (1/n) sum_i H_i (power iteration).
  double smoothness() const { return L_; }
  int n() const { return n_; }
  int d() const { return d_; }

 private:
  static std::vector<double> cholesky_solve(std::vector<double> M, std::vector<double> r, int d) {  // M is SPD
    for (int j = 0; j < d; ++j) {
      double s = M[j * d + j];
      for (int k = 0; k < j; ++k) s -= M[j * d + k] * M[j * d + k];
      s = std::sqrt(s);
      M[j * d + j] = s;
      for (int i = j + 1; i < d; ++i) {
        double t = M[i * d + j];
        for (int k = 0; k < j; ++k) t -= M[i * d + k] * M[j * d + k];
        M[i * d + j] = t / s;
      }
    }
    for (int i = 0; i < d; ++i) {
      double t = r[i];
      for (int k = 0; k < i; ++k) t -= M[i * d + k] * r[k];
      r[i] = t / M[i * d + i];
    }
    for (int i = d - 1; i >= 0; --i) {
      double t = r[i];
      for (int k = i + 1; k < d; ++k) t -= M[k * d + i] * r[k];
      r[i] = t / M[i * d + i];
    }
    return r;
  }
  static double top_eigenvalue(const std::vector<double>& H, int d) {
    std::vector<double> v(d, 1.0), w(d);
    double lam = 0;
    for (int it = 0; it < 300; ++it) {
      double nr = 0;
      for (int a = 0; a < d; ++a) {
        double s = 0;
        for (int c = 0; c < d; ++c) s += H[a * d + c] * v[c];
        w[a] = s;
        nr += s * s;
      }
      nr = std::sqrt(nr);
      lam = nr;
      for (int a = 0; a < d; ++a) v[a] = w[a] / nr;
    }
    return lam;
  }

  int n_, d_;
  std::vector<double> H_;
  std::vector<std::vector<double>> Hs_, cs_;
  std::vector<double> xs_;
  double xs_norm_ = 0, L_ = 0, gap0_ = 0;
};

}  // namespace gradzip::examples
