# bench_tokenizer: encode time on 1 MB inputs against a UTF-8 validation pass
# and against a tenth of the input (linearity), plus streaming detokenization.
add_executable(bench_tokenizer ${CMAKE_CURRENT_LIST_DIR}/bench_tokenizer.c)
target_link_libraries(bench_tokenizer PRIVATE lorad_text)
if(NOT LORAD_TOK_FIXTURE_BIN)
  set(LORAD_TOK_FIXTURE_BIN ${CMAKE_BINARY_DIR}/tokenizer-fixtures)
endif()
target_compile_definitions(bench_tokenizer PRIVATE
  LORAD_TOK_FIXTURE_BIN="${LORAD_TOK_FIXTURE_BIN}")
if(TARGET tokenizer_fixtures)
  add_dependencies(bench_tokenizer tokenizer_fixtures)
endif()
