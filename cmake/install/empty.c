/* libsnowflock's code is clone-core's, linked whole; a library needs one source of its own. */
typedef int snowflock_library_source;
