/* tally.h: the accounting of the answers the relay sends itself, kept in plain C.
 *
 * Each answer the engine rendered and sent (render.h) is counted here as
 * Accounting.record and Forwarder.note_reply would count it in Python: by (qtype, DO,
 * rcode, request size slot, response size slot), with its duration (client read to reply
 * sent) by time slot, and the upstream's reply time by rcode. Python folds the tallies
 * into the same series once a tick (Engine.relay_tallies, fastdns/serve/accounting.py
 * fold_relayed), so every metric counts as on the Python datapath. A table is bounded
 * (FD_TALLIES keys); an answer whose key finds no room is left to Python to count.
 */
#ifndef FASTDNS_CENGINE_TALLY_H
#define FASTDNS_CENGINE_TALLY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#define FD_TIME_BUCKETS 17 /* fastdns.metrics.stats.TIME_BUCKETS and +Inf */
#define FD_SIZE_BUCKETS 15 /* fastdns.metrics.stats.SIZE_BUCKETS and +Inf */
#define FD_TALLIES 64      /* distinct (qtype, DO, rcode, sizes) keys between two folds */

typedef struct {
    uint16_t qtype;
    uint8_t do_bit, rcode, req_slot, resp_slot;
    uint64_t n, req_bytes, resp_bytes;
    uint64_t dur[FD_TIME_BUCKETS];
    double dur_total;
} fd_tally;

typedef struct {
    fd_tally t[FD_TALLIES];
    size_t count;
    uint64_t proxy_n[16], proxy_dur[16][FD_TIME_BUCKETS];
    double proxy_total[16];
} fd_tallies;

/* bisect_left(TIME_BUCKETS, secs): the bounds are 0.00025 * 2**i, doubled exactly as
 * Python computes them. */
int fd_time_slot(double secs);

/* bisect_left(SIZE_BUCKETS, n). */
int fd_size_slot(size_t n);

/* Count one answer: its query's qtype and DO bit, the reply's rcode, the query's and the
 * reply's sizes, its duration and the upstream's reply time (seconds). 0: no room for its
 * key (nothing counted: Python counts it). */
int fd_tally_answer(fd_tallies *t, uint16_t qtype, int do_bit, int rcode, size_t req_len,
                    size_t resp_len, double secs, double upstream_secs);

/* The tallies since the last fold, and a fresh start: ([(qtype, do, rcode, req_slot,
 * req_bytes, resp_slot, resp_bytes, n, duration slots, duration total)], [(rcode, n,
 * upstream slots, upstream total)]), or NULL with an error set (nothing lost then). */
PyObject *fd_tallies_fold(fd_tallies *t);

/* SIZE_BUCKETS as this file bisects them (a module constant, for the tests). */
PyObject *fd_size_bounds(void);

#endif
