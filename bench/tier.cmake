# bench_tier: time to first token on a cold adapter against a hot one, and a
# hot adapter's time to first token while 4x more adapters than the device
# tier holds are in use.
add_executable(bench_tier ${CMAKE_CURRENT_LIST_DIR}/bench_tier.c)
target_link_libraries(bench_tier PRIVATE lorad_static Threads::Threads m)
target_compile_definitions(bench_tier PRIVATE
  MKMODEL="$<TARGET_FILE:lorad-mkmodel>"
  LORAD_BIN="$<TARGET_FILE:lorad>"
  LORADCTL="$<TARGET_FILE:loradctl>")
add_dependencies(bench_tier lorad-mkmodel lorad loradctl)
