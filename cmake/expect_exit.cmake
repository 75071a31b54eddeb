# cmake -DEXE=<program> -DARGS=<'|'-separated arguments> -DEXPECT_RC=<code|nonzero> [-DEXPECT_RE=<regex>] -P expect_exit.cmake
# Runs the program and requires its exit code and (optionally) that stdout+stderr match the regex: CTest alone cannot
# check both. Used by the CLI and example error-path tests (examples/CMakeLists.txt, tests/torch_ext/CMakeLists.txt).
string(REPLACE "|" ";" ARGS "${ARGS}")
execute_process(COMMAND ${EXE} ${ARGS} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("exit code: ${rc}\nstdout:\n${out}\nstderr:\n${err}")
if(EXPECT_RC STREQUAL "nonzero")
  if(rc EQUAL 0 OR NOT rc MATCHES "^[0-9]+$")
    message(FATAL_ERROR "expected a non-zero exit code (not a crash), got '${rc}'")
  endif()
elseif(NOT rc STREQUAL EXPECT_RC)
  message(FATAL_ERROR "expected exit code ${EXPECT_RC}, got '${rc}'")
endif()
if(DEFINED EXPECT_RE AND NOT "${out}${err}" MATCHES "${EXPECT_RE}")
  message(FATAL_ERROR "output does not match '${EXPECT_RE}'")
endif()
