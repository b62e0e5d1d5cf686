/* relay.h: cache misses relayed to the upstream in C (docs/datapath.md, "Misses").
 *
 * What may be relayed is Python's decision, pushed here as a policy (fd_relay_policy: the
 * upstream the forwarding state machine would ask first, its timeout, the names and types
 * Python must see) and as the mirror of the cache's keys (keys.h); a query outside it goes up
 * as before. A relayed query leaves from one of POOL random-port sockets connected to the
 * upstream (RFC 5452 §9.2: a port serves at most USES queries or AGE seconds, then gets a new
 * random port), with a random ID unique on its socket; a reply counts only when its ID is
 * awaited on that socket (which the kernel filters by source) and its question is the query's
 * (wire.h fd_question_matches). Every outcome, the answers and the failures (an error on the
 * socket, a timeout), goes up in one call per wakeup to Python, which stores, answers and
 * accounts the answers and drives the forwarding state machine on for the rest; an answer sent
 * and counted here (render.h, tally.h) goes up short, on the stored list, only to be stored.
 * Everything is bounded: the slots (Python's max_inflight), the sockets, each socket's IDs.
 */
#ifndef FASTDNS_CENGINE_RELAY_H
#define FASTDNS_CENGINE_RELAY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <sys/socket.h>

#include "admission.h"
#include "keys.h"
#include "render.h"
#include "tally.h"
#include "wire.h"

#define FD_RELAY_POOL 256      /* sockets in rotation (upsock.py POOL_SIZE) */
#define FD_RELAY_USES 8        /* queries per port (upsock.py MAX_USES) */
#define FD_RELAY_AGE 5.0       /* seconds a port is picked for new queries (MAX_AGE) */
#define FD_RELAY_SPARES 64     /* disconnected sockets kept for new ports (SPARES) */
#define FD_RELAY_MAX_QUERY 512 /* a larger query goes up */
#define FD_RELAY_MAX_ENDINGS 64
#define FD_RELAY_ENDING_MAX 64
#define FD_RELAY_MAX_TYPES 16   /* the native path's types (resolver.py NATIVE_TYPES: 7) */
#define FD_RELAY_MAX_SPECIAL 8  /* top-level names c-ares answers itself (_SPECIAL_TLDS) */
#define FD_RELAY_SPECIAL_MAX 63
/* Why a query the native path declines went raw (resolver.py decline_reason), counted */
#define FD_RELAY_UNSUPPORTED 0
#define FD_RELAY_DNSSEC 1
#define FD_RELAY_DISABLED 2

/* What each item of the list handed up says: (kind, seq, query, reply or None, client
 * address, read at, sent at, the query's fields as fd_parse_query read them: id, flags,
 * qname length, qtype, qclass, qend, has_opt, udp_size, do, edns_version, key, and for an
 * answer the cache's verdict on it as admission.c gives it: a Verdict tuple, None when it is
 * not cacheable, False when not classified here; then the reply the engine sent the client
 * itself (render.h), or None when Python is to answer), seq numbering the engine's relayed
 * queries. After a timeout a
 * query's ID stays awaited until the client's deadline (the state machine's rule: every UDP
 * attempt's reply stays acceptable): its reply, or its socket's error, then comes up as LATE. */
#define FD_RELAY_REPLY 0      /* the answer */
#define FD_RELAY_ERROR 1      /* the socket failed (ICMP unreachable, a send refused) */
#define FD_RELAY_TIMEOUT 2    /* no reply within the timeout */
#define FD_RELAY_LATE 3       /* the reply to a query that timed out */
#define FD_RELAY_LATE_ERROR 4 /* the socket of a query that timed out failed */
#define FD_RELAY_FOLLOW 5     /* the same question as query seq, in flight: wait for it */

typedef struct fd_usock {
    int fd;
    int pool;     /* its index in the pool; -1 once retired, -2 a spare */
    int uses, npend;
    double born;
    uint16_t uid[FD_RELAY_USES];
    uint32_t slot[FD_RELAY_USES];
} fd_usock;

typedef struct {
    struct sockaddr_storage addr; /* the client */
    socklen_t alen;
    uint32_t prev, next; /* its list, in send order (= deadline order) */
    uint8_t used, late;  /* late: timed out, on the late list until the client's deadline */
    uint8_t first;       /* forwarded raw first for the native path (forward_first) */
    uint64_t seq, khash; /* khash: of its key, in the leaders' table while in flight */
    uint16_t qlen, uid;
    double t0, sent, expires;
    fd_usock *sock;
    struct fd_query q;
    uint8_t query[FD_RELAY_MAX_QUERY]; /* as the client sent it (its ID) */
} fd_rslot;

typedef struct {
    unsigned long long relayed, answered, failed, timeouts, unmatched, mismatched, opened,
        send_errors, full, followed, rendered, declined[3];
} fd_relay_counters;

typedef struct {
    /* the policy (fd_relay_policy); enabled = 0: everything goes up */
    int enabled, family, ipv6_local;
    struct sockaddr_storage server;
    socklen_t server_len;
    double timeout, deadline;
    uint32_t mark;
    size_t nendings;
    uint8_t endings[FD_RELAY_MAX_ENDINGS][FD_RELAY_ENDING_MAX];
    uint8_t ending_len[FD_RELAY_MAX_ENDINGS];
    uint8_t suffix[FD_MAX_NAME + 1];
    size_t suffix_len;
    /* the native path (resolver.py): which queries it declines (relayed raw, counted) and
     * which it lets go raw first (forward_first); the rest go up to c-ares */
    int native, first, ndots, driver, nss;
    size_t ntypes, nspecial;
    uint16_t types[FD_RELAY_MAX_TYPES];
    uint8_t special[FD_RELAY_MAX_SPECIAL][FD_RELAY_SPECIAL_MAX];
    uint8_t special_len[FD_RELAY_MAX_SPECIAL];
    /* the sockets */
    int epfd;
    fd_usock *pool[FD_RELAY_POOL];
    fd_usock *spares[FD_RELAY_SPARES];
    size_t nspares, open;
    /* the slots: at most cap in flight or late */
    fd_rslot *slots;
    uint32_t cap, *free, nfree, inflight, nlate;
    uint32_t head, tail, lhead, ltail; /* in flight; late */
    uint64_t seq;
    uint64_t rng;
    /* the queries in flight by key (slot + 1; 0 empty), so the same question asked again
     * meanwhile waits for the first (Pipeline.pending's coalescing) */
    uint32_t *leaders;
    size_t lcap;
    fd_keys keys;
    int classify; /* the cache's limits are known: answers are classified here */
    fd_cache_cfg cache;
    /* answers rendered and sent to the client here (render.h), through emit(ctx, ...) */
    int render, lima_compat;
    fd_render_cfg store;
    uint16_t edns_max_udp;
    void (*emit)(void *ctx, const struct sockaddr_storage *sa, socklen_t salen, PyObject *data);
    void *emit_ctx;
    uint32_t verdict_room[2 * FD_MAX_RECORDS];
    uint8_t out[65536];
    fd_relay_counters c;
    /* the answers sent from here: counted here (tally.h) and, for Python to store and hand
     * to the questions waiting on them, on the stored list, one (seq, key, qend, reply,
     * verdict, sent) per answer; now: when the replies being read came */
    fd_tallies tally;
    PyObject *stored;
    double now;
    uint8_t rbuf[65536];
} fd_relay;

#define FD_RELAY_NONE UINT32_MAX

int fd_relay_init(fd_relay *r, uint32_t cap, uint64_t seed); /* -1 with an error set */
void fd_relay_free(fd_relay *r); /* closes every socket; what was in flight is forgotten */

/* The policy from a Python call (engine.c relay_policy: server, timeout, deadline, mark,
 * endings, suffix, ipv6_local, native, nss); native None (no native path) or (types,
 * forward_first, ndots, has_channel, special top-level names); nss: .local A/AAAA go up.
 * -1 with an error set. */
int fd_relay_policy(fd_relay *r, PyObject *const *args, Py_ssize_t nargs);

/* The datagram buf[0:len] from sa, a query from a passing source with no ready reply:
 * 1 when it was taken (relayed, or failed into `items`), 0 when it goes up to Python,
 * -1 with an error set (out of memory building an item). */
int fd_relay_take(fd_relay *r, const uint8_t *buf, size_t len,
                  const struct sockaddr_storage *sa, socklen_t salen, double t0,
                  PyObject *items);

/* The upstream sockets are readable: their replies and errors into `items`. -1: error set. */
int fd_relay_read(fd_relay *r, double now, PyObject *items);

/* Queries whose time is up into `items` (late ones past the deadline are forgotten); -1
 * with an error set. */
int fd_relay_expire(fd_relay *r, double now, PyObject *items);

/* When the next query times out or late one is forgotten; < 0 when none waits. */
double fd_relay_next_expiry(const fd_relay *r);

#endif
