# What `cmake --install BUILD --prefix P` puts where: the programs in P/bin, the man page in
# P/share/man/man1, the documents in P/share/doc/snowflock-mpi, the C API's header in
# P/include/clone-core/sf.h and its shared library P/lib/<arch>/libsnowflock.so.0 (only the sf_*
# symbols exported) with a pkg-config file (snowflock.pc) and a CMake package
# (find_package(SnowFlock)), the Python module snowflock (python/CMakeLists.txt says where),
# the API examples in P/share/doc/snowflock-mpi/examples, and an environment module in
# P/share/modulefiles/snowflock-mpi.
# The installed programs need nothing from the build tree: mpirun-sf
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
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/examples/sf-api/sf_sum.c DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)
install(PROGRAMS ${CMAKE_CURRENT_SOURCE_DIR}/examples/sf-api/sf_sum.py DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)

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

# An environment module (Lmod, Tcl-free Lua) for sites that install into a prefix of their own.
set(SF_MODULE_PYTHONPATH "")
if(TARGET snowflock_python)
  set(SF_MODULE_PYTHONPATH "prepend_path(\"PYTHONPATH\", pathJoin(prefix, \"${SF_PYTHON_PREFIX_DIR}\"))")
endif()
configure_file(${CMAKE_CURRENT_SOURCE_DIR}/cmake/install/snowflock-mpi.lua.in
               ${CMAKE_CURRENT_BINARY_DIR}/install/${PROJECT_VERSION}.lua @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/install/${PROJECT_VERSION}.lua
        DESTINATION ${CMAKE_INSTALL_DATADIR}/modulefiles/snowflock-mpi)

# A Debian package of the same tree: scripts/package (cpack -G DEB), installed under /usr.
# Library dependencies come from dpkg-shlibdeps; what the programs run besides is declared
# here (sfd's guest inputs are recommended: only the qemu driver needs them).
set(SF_PACKAGE_MAINTAINER "SnowFlock MPI maintainers <maintainers@users.noreply.h-seed-1a4e3afd.example>"
    CACHE STRING "Maintainer field of the Debian package")
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME snowflock-mpi)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "${SF_PACKAGE_MAINTAINER}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "drop-in mpirun that forks this machine into an impromptu cluster")
set(CPACK_PACKAGE_DESCRIPTION "mpirun-sf runs unmodified Open MPI 4.1 programs like mpirun, on clones of the machine it runs on (Linux namespaces or QEMU VMs), or on the nodes of a Slurm allocation. Also sfd (VM cloning host daemon), memtap, mcdist and the SnowFlock clone API (libsnowflock).")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION utils)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_STRIP_FILES TRUE)  # debug information stays in the build tree
set(CPACK_DEBIAN_PACKAGE_DEPENDS "iproute2")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "openmpi-bin, qemu-system-x86, busybox-static, erofs-utils, fuse3")
if(TARGET snowflock_python)  # the module is built for one Python version
  string(APPEND CPACK_DEBIAN_PACKAGE_RECOMMENDS ", ${SF_PYTHON_DEBIAN_DEPENDS}")
endif()
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "slurm-client, linux-image-amd64")
include(CPack)
