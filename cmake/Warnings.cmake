# Project warning flags, applied per target with sinkscope_warnings(<target>) so generated code stays quiet.
function(sinkscope_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
endfunction()
