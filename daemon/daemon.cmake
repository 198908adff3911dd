# The daemon core is a static library so tests and fuzz targets drive the
# same session and validation code the daemon runs.
add_library(lorad_daemon_core STATIC
  ${CMAKE_CURRENT_LIST_DIR}/log.c
  ${CMAKE_CURRENT_LIST_DIR}/config.c
  ${CMAKE_CURRENT_LIST_DIR}/options.c
  ${CMAKE_CURRENT_LIST_DIR}/instance.c
  ${CMAKE_CURRENT_LIST_DIR}/statedir.c
  ${CMAKE_CURRENT_LIST_DIR}/notify.c
  ${CMAKE_CURRENT_LIST_DIR}/admin.c
  ${CMAKE_CURRENT_LIST_DIR}/session.c
  ${CMAKE_CURRENT_LIST_DIR}/server.c
  ${CMAKE_CURRENT_LIST_DIR}/nullexec.c
  ${CMAKE_CURRENT_LIST_DIR}/scheduler.c
  ${CMAKE_CURRENT_LIST_DIR}/tokq.c
  ${CMAKE_CURRENT_LIST_DIR}/workq.c
  ${CMAKE_CURRENT_LIST_DIR}/route.c
  ${CMAKE_CURRENT_LIST_DIR}/registry.c
  ${CMAKE_CURRENT_LIST_DIR}/regstate.c
  ${CMAKE_CURRENT_LIST_DIR}/metrics.c
  ${CMAKE_CURRENT_LIST_DIR}/ops.c
  ${CMAKE_CURRENT_LIST_DIR}/classify.c)
target_include_directories(lorad_daemon_core PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(lorad_daemon_core PUBLIC lorad_shm lorad_engine lorad_tokenizer lorad_loader Threads::Threads
  PkgConfig::SYSTEMD PkgConfig::INIH PkgConfig::JSONC PkgConfig::OPENSSL PkgConfig::PCRE2)

add_executable(lorad ${CMAKE_CURRENT_LIST_DIR}/main.c)
target_link_libraries(lorad PRIVATE lorad_daemon_core)
install(TARGETS lorad RUNTIME DESTINATION ${CMAKE_INSTALL_SBINDIR})

add_executable(loradctl ${CMAKE_CURRENT_LIST_DIR}/loradctl.c)
target_link_libraries(loradctl PRIVATE PkgConfig::JSONC)
install(TARGETS loradctl RUNTIME DESTINATION ${CMAKE_INSTALL_SBINDIR})
