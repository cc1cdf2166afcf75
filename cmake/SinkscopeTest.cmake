# sinkscope_add_test_suite: one GoogleTest executable registered as ONE ctest entry. A torch-linked process
# costs ~0.5 s to start, so a suite is one process for all its tests, not one process per test.
#
#   sinkscope_add_test_suite(NAME <ctest name> TARGET <executable>
#                            SOURCES <file>...
#                            LIBS <library>...                 # GTest (and ${TORCH_LIBRARIES}) are not implied
#                            [DEFINITIONS <NAME="value">...]   # compile definitions the sources read
#                            TIMEOUT <seconds>
#                            LABELS <label>...
#                            [DEPENDS <target>...])            # targets to build first (e.g. binaries it runs)
function(sinkscope_add_test_suite)
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "NAME;TARGET;TIMEOUT" "SOURCES;LIBS;DEFINITIONS;LABELS;DEPENDS")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "sinkscope_add_test_suite: unknown arguments: ${arg_UNPARSED_ARGUMENTS}")
  endif()
  foreach(required NAME TARGET SOURCES LIBS TIMEOUT LABELS)
    if(NOT arg_${required})
      message(FATAL_ERROR "sinkscope_add_test_suite: ${required} is required")
    endif()
  endforeach()

  add_executable(${arg_TARGET} ${arg_SOURCES})
  target_link_libraries(${arg_TARGET} PRIVATE ${arg_LIBS})
  if(arg_DEFINITIONS)
    target_compile_definitions(${arg_TARGET} PRIVATE ${arg_DEFINITIONS})
  endif()
  if(arg_DEPENDS)
    add_dependencies(${arg_TARGET} ${arg_DEPENDS})
  endif()
  sinkscope_warnings(${arg_TARGET})

  add_test(NAME ${arg_NAME} COMMAND ${arg_TARGET})
  # Quoted: LABELS is a list, and set_tests_properties takes one value per property.
  set_tests_properties(${arg_NAME} PROPERTIES TIMEOUT ${arg_TIMEOUT} LABELS "${arg_LABELS}")
endfunction()
