# bench_serve: the daemon under open-loop Poisson arrivals from several client
# processes, against the same scheduler driven in-process (the bare engine).
add_executable(bench_serve ${CMAKE_CURRENT_LIST_DIR}/bench_serve.c)
target_link_libraries(bench_serve PRIVATE lorad_serving lorad_static m)
target_compile_definitions(bench_serve PRIVATE
  MKMODEL="$<TARGET_FILE:lorad-mkmodel>"
  LORAD_BIN="$<TARGET_FILE:lorad>")
add_dependencies(bench_serve lorad-mkmodel lorad)
