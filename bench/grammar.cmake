# bench_grammar: constrained decoding's compile time, per-step mask time
# (trie walk and cached copy against brute force) and decode tokens/s under
# a JSON Schema against the same requests unconstrained (the daemon, demo model).
add_executable(bench_grammar ${CMAKE_CURRENT_LIST_DIR}/bench_grammar.c)
target_link_libraries(bench_grammar PRIVATE lorad_grammar lorad_text lorad_static)
if(NOT LORAD_TOK_FIXTURE_BIN)
  set(LORAD_TOK_FIXTURE_BIN ${CMAKE_BINARY_DIR}/tokenizer-fixtures)
endif()
target_compile_definitions(bench_grammar PRIVATE
  LORAD_TOK_FIXTURE_BIN="${LORAD_TOK_FIXTURE_BIN}"
  LORAD_DEMO_MODEL="${CMAKE_SOURCE_DIR}/demo/model"
  LORAD_BIN="$<TARGET_FILE:lorad>")
add_dependencies(bench_grammar lorad)
if(TARGET tokenizer_fixtures)
  add_dependencies(bench_grammar tokenizer_fixtures)
endif()
