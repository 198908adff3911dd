# The tokenizer: tokenizer.json (json-c), PCRE2 pre-tokenizer regexes,
# utf8proc normalization, streaming detokenization with stop strings.
# A static library: the daemon, lorad-run and lorad-cli's server side link it.
add_library(lorad_tokenizer STATIC
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer.c
  ${CMAKE_CURRENT_LIST_DIR}/tok_util.c
  ${CMAKE_CURRENT_LIST_DIR}/tok_text.c
  ${CMAKE_CURRENT_LIST_DIR}/tok_bpe.c
  ${CMAKE_CURRENT_LIST_DIR}/tok_decode.c
  ${CMAKE_CURRENT_LIST_DIR}/detok.c)
target_include_directories(lorad_tokenizer PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(lorad_tokenizer
  PUBLIC Threads::Threads
  PRIVATE PkgConfig::JSONC PkgConfig::PCRE2 PkgConfig::UTF8PROC)
