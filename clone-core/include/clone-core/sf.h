/* clone-core: the SnowFlock clone API in C. Built on the C++ API (clone.hpp); no exception
 * crosses it. Functions return SF_OK (0) or a negative SF_ERR_* code; sf_last_error() gives
 * the message of the last failure in this thread (what failed and what to do).
 *
 *   sf_ticket *t; sf_ticket_options o; sf_ticket_options_init(&o); o.clones = 3;
 *   if (sf_request_ticket(&o, &t) != SF_OK) { puts(sf_last_error()); return 1; }
 *   int id = sf_clone(t);            // 0 in the parent, 1..sf_granted(t) in clones, <0 error
 *   if (id > 0) { work(id); sf_sync(0); }                  // a clone ends here
 *   sf_clone_status st[3]; sf_join(t, st, 3); sf_ticket_free(t);
 *
 * sf_clone() must be called while the process is single-threaded (SF_ERR_NOT_SINGLE_THREADED).
 */
#ifndef CLONE_CORE_SF_H
#define CLONE_CORE_SF_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes (returned negated). Keep in sync with sf::Errc. */
#define SF_OK 0
#define SF_ERR_INVALID_ARGUMENT 1
#define SF_ERR_NOT_SINGLE_THREADED 2
#define SF_ERR_MISSING_PRIVILEGE 3
#define SF_ERR_INSUFFICIENT_RESOURCES 4
#define SF_ERR_NO_CLUSTER_SLOT 5
#define SF_ERR_DRIVER_UNAVAILABLE 6
#define SF_ERR_NETWORK_SETUP 7
#define SF_ERR_NAMESPACE_SETUP 8
#define SF_ERR_CLONE_FAILED 9
#define SF_ERR_WRONG_SIDE 10
#define SF_ERR_BAD_STATE 11
#define SF_ERR_SYSTEM 12

typedef struct sf_ticket sf_ticket;

enum sf_tmp_mode { SF_TMP_OVERLAY = 0, SF_TMP_EMPTY = 1 };

typedef struct sf_ticket_options {
  unsigned clones;          /* machines besides the parent (default 1) */
  unsigned procs_per_clone; /* processes per machine (default 1) */
  unsigned min_clones;      /* accept fewer down to this; 0 = all or nothing (default) */
  const char *driver;       /* "auto" (default), "sandbox", "fake" */
  const char *subnet_pool;  /* default "10.213.0.0/16", one /24 per cluster */
  int tmp_mode;             /* enum sf_tmp_mode, default SF_TMP_OVERLAY */
} sf_ticket_options;

/* How a clone ended. */
enum sf_clone_end {
  SF_CLONE_SYNCED = 0,   /* value = the status passed to sf_sync */
  SF_CLONE_EXITED = 1,   /* exited without sf_sync; value = exit code */
  SF_CLONE_SIGNALED = 2, /* died of a signal without sf_sync; value = signal number */
  SF_CLONE_KILLED = 3,   /* torn down by sf_kill or sf_ticket_free */
  SF_CLONE_LOST = 4      /* vanished without a report */
};

typedef struct sf_clone_status {
  unsigned id;
  int end;   /* enum sf_clone_end */
  int value;
} sf_clone_status;

void sf_ticket_options_init(sf_ticket_options *options);
int sf_request_ticket(const sf_ticket_options *options, sf_ticket **ticket);
/* >= 0: the clone id (0 in the parent); < 0: -SF_ERR_*. */
int sf_clone(sf_ticket *ticket);
/* In a clone: report `status` to the parent and end the clone. Returns -SF_ERR_WRONG_SIDE in a parent. */
int sf_sync(int status);
/* Parent: wait for all clones; fills statuses[0..min(n, granted)) by id - 1; removes everything. */
int sf_join(sf_ticket *ticket, sf_clone_status *statuses, size_t n);
/* Parent: end every clone now and remove everything. */
int sf_kill(sf_ticket *ticket);
/* Frees the ticket; in the parent, kills clones that are still up. NULL is fine. */
void sf_ticket_free(sf_ticket *ticket);

int sf_granted(const sf_ticket *ticket);   /* clones granted; < 0 on error */
int sf_clone_id(void);                     /* 0 in the parent, i in clone i */
/* Node `id` (0 = parent .. granted): dotted-quad address, hostname; NULL if out of range. */
const char *sf_node_address(const sf_ticket *ticket, unsigned id);
const char *sf_node_hostname(const sf_ticket *ticket, unsigned id);
const char *sf_subnet(const sf_ticket *ticket);        /* "10.213.k.0/24" */
const char *sf_interface(const sf_ticket *ticket);     /* this node's cluster interface */
int sf_exit_fd(const sf_ticket *ticket);               /* pollable; a clone may have ended */
/* Non-blocking: writes up to n clones that ended since the last call; returns how many. */
int sf_poll_exited(sf_ticket *ticket, sf_clone_status *statuses, size_t n);
/* Remove what crashed runs left; returns the number of stale clusters cleaned or < 0. */
int sf_cleanup(void);

const char *sf_strerror(int code);   /* name of an SF_ERR_* code (either sign) */
const char *sf_last_error(void);     /* message of this thread's last failure */

#ifdef __cplusplus
}
#endif

#endif /* CLONE_CORE_SF_H */
