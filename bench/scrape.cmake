# bench_scrape: what answering a Prometheus scrape of many series costs the
# requests running meanwhile (inter-token latency against a quiet run).
add_executable(bench_scrape ${CMAKE_CURRENT_LIST_DIR}/bench_scrape.c)
target_link_libraries(bench_scrape PRIVATE lorad_static Threads::Threads)
target_compile_definitions(bench_scrape PRIVATE
  MKMODEL="$<TARGET_FILE:lorad-mkmodel>"
  LORAD_BIN="$<TARGET_FILE:lorad>")
add_dependencies(bench_scrape lorad-mkmodel lorad)
