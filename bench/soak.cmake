# soak: the daemon's reliability under client SIGKILLs and daemon restarts
# (lost, duplicated and failed requests, fds and RSS). Run by hand
# (build/bin/soak --quick); it takes minutes, so it is not a test.
add_executable(soak ${CMAKE_CURRENT_LIST_DIR}/soak.c)
target_link_libraries(soak PRIVATE lorad_static m)
target_include_directories(soak PRIVATE ${CMAKE_SOURCE_DIR}/shm ${CMAKE_SOURCE_DIR}/daemon/serving)
target_compile_definitions(soak PRIVATE
  MKMODEL="$<TARGET_FILE:lorad-mkmodel>"
  LORAD_BIN="$<TARGET_FILE:lorad>"
  LORADCTL="$<TARGET_FILE:loradctl>")
add_dependencies(soak lorad-mkmodel lorad loradctl)
