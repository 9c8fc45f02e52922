# What `cmake --install BUILD --prefix P` puts where: the programs in P/bin, the man page in
# P/share/man/man1, the documents in P/share/doc/snowflock-mpi, the C API's header in
# P/include/clone-core/sf.h and its shared library P/lib/<arch>/libsnowflock.so.0 (only the sf_*
# symbols exported) with a pkg-config file (snowflock.pc) and a CMake package
# (find_package(SnowFlock)). The installed programs need nothing from the build tree: mpirun-sf
# and sfd find themselves through /proc/self/exe.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# libsnowflock: clone-core's objects (built position-independent) in a shared library.
add_library(snowflock SHARED ${CMAKE_CURRENT_SOURCE_DIR}/cmake/install/empty.c)
target_link_libraries(snowflock PRIVATE "$<LINK_LIBRARY:WHOLE_ARCHIVE,sf_clone_core>")
target_link_options(snowflock PRIVATE
  "-Wl,--version-script=${CMAKE_CURRENT_SOURCE_DIR}/cmake/install/snowflock.map" -Wl,--no-undefined)
set_target_properties(snowflock PROPERTIES
  VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR}
  LINKER_LANGUAGE CXX
  LINK_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/cmake/install/snowflock.map)

install(TARGETS mpirun-sf sfd memtap mcdist sf-cluster-state RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS snowflock LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/clone-core/include/clone-core/sf.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/clone-core)
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/docs/mpirun-sf.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
install(DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR}
        PATTERN "mpirun-sf.1" EXCLUDE)
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})

# Both files find the prefix relative to where they are installed, so `--prefix` at install
# time (or moving the tree) keeps them right.
file(RELATIVE_PATH SF_PC_TO_PREFIX "/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/")
file(RELATIVE_PATH SF_CMAKE_TO_PREFIX "/${CMAKE_INSTALL_LIBDIR}/cmake/SnowFlock" "/")
configure_file(${CMAKE_CURRENT_SOURCE_DIR}/cmake/install/snowflock.pc.in
               ${CMAKE_CURRENT_BINARY_DIR}/install/snowflock.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/install/snowflock.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
configure_file(${CMAKE_CURRENT_SOURCE_DIR}/cmake/install/SnowFlockConfig.cmake.in
               ${CMAKE_CURRENT_BINARY_DIR}/install/SnowFlockConfig.cmake @ONLY)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/install/SnowFlockConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/install/SnowFlockConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/install/SnowFlockConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/SnowFlock)
