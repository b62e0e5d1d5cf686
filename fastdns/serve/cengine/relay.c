/* Cache misses relayed to the upstream in C (relay.h). */
#define _GNU_SOURCE
#include "relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "addr.h"
#include "forms.h" /* fd_hash */
#include "wirebind.h" /* fd_verdict_tuple */

#define READ_BATCH 64 /* replies read per wakeup of one socket (upsock.py READ_BATCH) */
#define EVENTS 64

/* ------------------------------------------------------------------------- randomness */

/* xoshiro-free and small: splitmix64, seeded from getrandom per engine. IDs and ports are
 * what RFC 5452 asks to be unpredictable; Python's lane uses random.getrandbits likewise. */
static uint64_t next_rand(fd_relay *r) {
    uint64_t z = (r->rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* ------------------------------------------------------------------------- sockets */

static void close_sock(fd_relay *r, fd_usock *s) {
    if (s->pool >= 0 && r->pool[s->pool] == s) r->pool[s->pool] = NULL;
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, s->fd, NULL);
    close(s->fd);
    r->open--;
    PyMem_Free(s);
}

/* `s` has no query left: give its port back and keep it as a spare (upsock.py close_socket,
 * portswap.py), or close it. Datagrams queued for the old port are read and dropped: they
 * must never be taken for replies to the next port's queries (RFC 5452 §9.2). */
static void release(fd_relay *r, fd_usock *s) {
    if (s->pool >= 0 && r->pool[s->pool] == s) r->pool[s->pool] = NULL;
    s->pool = -1;
    if (r->nspares >= FD_RELAY_SPARES || !r->enabled) {
        close_sock(r, s);
        return;
    }
    struct sockaddr unspec;
    memset(&unspec, 0, sizeof(unspec));
    unspec.sa_family = AF_UNSPEC;
    if (connect(s->fd, &unspec, sizeof(unspec)) != 0) {
        close_sock(r, s);
        return;
    }
    for (int i = 0;; i++) {
        if (i == READ_BATCH) { /* a flood: not worth keeping */
            close_sock(r, s);
            return;
        }
        if (recv(s->fd, r->rbuf, 1, MSG_DONTWAIT) < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            close_sock(r, s); /* an error queued for the old association */
            return;
        }
    }
    s->pool = -2;
    s->npend = 0;
    r->spares[r->nspares++] = s;
}

/* A socket connected to the upstream with a fresh kernel-chosen port, or NULL. */
static fd_usock *open_sock(fd_relay *r, double now, int index) {
    fd_usock *s = NULL;
    while (r->nspares > 0 && s == NULL) {
        s = r->spares[--r->nspares];
        int family = 0;
        socklen_t flen = sizeof(family);
        if (getsockopt(s->fd, SOL_SOCKET, SO_DOMAIN, &family, &flen) < 0 || family != r->family) {
            close_sock(r, s); /* the upstream changed family */
            s = NULL;
        }
    }
    if (s == NULL) {
        int fd = socket(r->family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) return NULL; /* out of descriptors: the caller reuses an open socket */
        if (r->mark) /* before the first packet (sockmark.py); refused: forward anyway */
            (void)setsockopt(fd, SOL_SOCKET, SO_MARK, &r->mark, sizeof(r->mark));
        s = PyMem_Calloc(1, sizeof(fd_usock));
        if (s == NULL) {
            close(fd);
            return NULL;
        }
        s->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
        if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            PyMem_Free(s);
            return NULL;
        }
        r->open++;
    }
    s->pool = -1;
    if (connect(s->fd, (struct sockaddr *)&r->server, r->server_len) != 0) {
        close_sock(r, s);
        return NULL;
    }
    s->pool = index;
    s->uses = s->npend = 0;
    s->born = now;
    r->c.opened++;
    return s;
}

/* No new queries on `s`; it is released when its last one is done. */
static void retire(fd_relay *r, fd_usock *s) {
    if (s->pool >= 0 && r->pool[s->pool] == s) r->pool[s->pool] = NULL;
    s->pool = -1;
    if (s->npend == 0) release(r, s);
}

/* A socket for one query: a random slot of the pool, given a new port when used up or old. */
static fd_usock *pick(fd_relay *r, double now) {
    int i = (int)(next_rand(r) % FD_RELAY_POOL);
    fd_usock *s = r->pool[i];
    if (s == NULL || s->uses >= FD_RELAY_USES || now - s->born > FD_RELAY_AGE) {
        fd_usock *fresh = open_sock(r, now, i);
        if (fresh != NULL) {
            if (s != NULL) retire(r, s);
            r->pool[i] = s = fresh;
        } else if (s == NULL) {
            for (int j = 0; j < FD_RELAY_POOL && s == NULL; j++) s = r->pool[j];
        }
    }
    if (s == NULL || s->npend >= FD_RELAY_USES) return NULL; /* Python's lane takes it */
    s->uses++;
    return s;
}

/* ------------------------------------------------------------------------- slots */

/* ------------------------------------------------------------------------- leaders */

/* The place of slot `i` (or of key hash h's run end) in the leaders' table. */
static size_t lead_find(const fd_relay *r, const struct fd_query *q, uint64_t h) {
    size_t mask = r->lcap - 1, j = (size_t)h & mask;
    while (r->leaders[j] != 0) {
        const fd_rslot *x = &r->slots[r->leaders[j] - 1];
        if (x->khash == h && x->q.key_len == q->key_len &&
            memcmp(x->q.key, q->key, q->key_len) == 0)
            return j;
        j = (j + 1) & mask;
    }
    return j;
}

static void lead_del(fd_relay *r, uint32_t i) {
    fd_rslot *x = &r->slots[i];
    size_t mask = r->lcap - 1, j = lead_find(r, &x->q, x->khash);
    if (r->leaders[j] != i + 1) return; /* not the leader (a follower never is in) */
    /* backward-shift deletion: later members of the run move into the hole */
    size_t k = j;
    r->leaders[j] = 0;
    for (;;) {
        k = (k + 1) & mask;
        uint32_t v = r->leaders[k];
        if (v == 0) return;
        size_t home = (size_t)r->slots[v - 1].khash & mask;
        /* v may move to j when j lies cyclically in [home, k) */
        if (j <= k ? (home <= j || home > k) : (home <= j && home > k)) {
            r->leaders[j] = v;
            r->leaders[k] = 0;
            j = k;
        }
    }
}

/* Take slot i off its list (in flight, or late). */
static void unlist(fd_relay *r, uint32_t i) {
    fd_rslot *x = &r->slots[i];
    if (!x->late) lead_del(r, i);
    uint32_t *head = x->late ? &r->lhead : &r->head, *tail = x->late ? &r->ltail : &r->tail;
    if (x->prev != FD_RELAY_NONE)
        r->slots[x->prev].next = x->next;
    else
        *head = x->next;
    if (x->next != FD_RELAY_NONE)
        r->slots[x->next].prev = x->prev;
    else
        *tail = x->prev;
    if (x->late)
        r->nlate--;
    else
        r->inflight--;
}

/* Append slot i to its list. */
static void enlist(fd_relay *r, uint32_t i) {
    fd_rslot *x = &r->slots[i];
    uint32_t *head = x->late ? &r->lhead : &r->head, *tail = x->late ? &r->ltail : &r->tail;
    x->next = FD_RELAY_NONE;
    x->prev = *tail;
    if (*tail != FD_RELAY_NONE)
        r->slots[*tail].next = i;
    else
        *head = i;
    *tail = i;
    if (x->late)
        r->nlate++;
    else
        r->inflight++;
}

static void unlink_slot(fd_relay *r, uint32_t i) {
    fd_rslot *x = &r->slots[i];
    unlist(r, i);
    x->used = x->late = 0;
    x->sock = NULL;
    r->free[r->nfree++] = i;
}

/* Forget the query in `s`'s j-th place (its slot stays). */
static void sock_forget(fd_usock *s, int j) {
    s->npend--;
    s->uid[j] = s->uid[s->npend];
    s->slot[j] = s->slot[s->npend];
}

/* Whether the answer is final as it is: not for a query forwarded first for the native path
 * when it lacks what c-ares wanted (native.py settle), nor an address question NSS would
 * take on (nss.py wants); those Python answers. */
static int final_here(const fd_relay *r, const fd_rslot *x, const uint8_t *reply, size_t n) {
    const struct fd_query *q = &x->q;
    int rcode = reply[3] & 0xF, address = q->qtype == 1 || q->qtype == 28;
    size_t an = (size_t)(reply[6] << 8 | reply[7]);
    if (x->first) {
        int found = 0;
        if (address) { /* compose.has_answer: an answer record of the asked type */
            size_t i = q->qend;
            for (size_t k = 0; k < an && rcode == 0 && !found; k++) {
                while (i < n && reply[i] != 0 && reply[i] <= 63) i += (size_t)reply[i] + 1;
                if (i >= n || (reply[i] > 63 && reply[i] < 0xC0)) return 0; /* (wire.name_end) */
                i += reply[i] >= 0xC0 ? 2 : 1;
                if (i + 10 > n) return 0;
                found = (reply[i] << 8 | reply[i + 1]) == q->qtype;
                i += 10 + (size_t)(reply[i + 8] << 8 | reply[i + 9]);
            }
        } else {
            found = rcode == 0 && an > 0;
        }
        if (!found) return 0;
    }
    if (r->nss && address && !q->do_bit && !(q->flags & 0x0010) &&
        (rcode == 3 || (rcode == 0 && an == 0)))
        return 0;
    return 1;
}

/* The client's reply to an answer, built and sent here (render.h): the bytes sent, or NULL
 * when Python is to answer it (not final here, too big for the client, or not buildable). */
static PyObject *answer_here(fd_relay *r, const fd_rslot *x, const uint8_t *reply, size_t n,
                             const fd_verdict *v) {
    const struct fd_query *q = &x->q;
    int rcode = reply[3] & 0xF;
    if (r->emit == NULL || reply[2] & 0x02 || rcode == 2 || rcode == 5 ||
        !final_here(r, x, reply, n))
        return NULL;
    /* the client's UDP limit (udp.py _reply_limit) */
    size_t limit = r->lima_compat ? 512
                   : q->has_opt   ? (q->udp_size < r->edns_max_udp ? q->udp_size : r->edns_max_udp)
                                  : 512;
    size_t len = fd_render(reply, n, x->query, q, v, &r->store, r->out, sizeof(r->out));
    if (len == 0 || len > limit) return NULL;
    PyObject *data = PyBytes_FromStringAndSize((const char *)r->out, (Py_ssize_t)len);
    if (data == NULL) {
        PyErr_Clear(); /* out of memory: Python answers it */
        return NULL;
    }
    r->emit(r->emit_ctx, &x->addr, x->alen, data);
    r->c.rendered++;
    return data;
}

/* The cache's verdict on an answer (relay.h): a tuple, None, or False when not classified. */
static PyObject *verdict_of(fd_relay *r, const fd_rslot *x, const uint8_t *reply, size_t rlen,
                            PyObject **sent) {
    if (!r->classify) return Py_NewRef(Py_False);
    fd_verdict v = {.ttls = r->verdict_room};
    int ok = fd_classify(reply, rlen, x->query, &x->q, &r->cache, -1, &v);
    PyObject *verdict = ok ? fd_verdict_tuple(&v) : Py_NewRef(Py_None);
    if (verdict != NULL && r->render) *sent = answer_here(r, x, reply, rlen, ok ? &v : NULL);
    return verdict;
}

/* An answer sent from here, counted here (tally.h): what Python still does with it, as a
 * short item on the stored list (relay.h). 1: so; 0: no room in the tallies, or an answer
 * the native path counts (forward_first), which goes up in full; -1 with an error set. */
static int put_stored(fd_relay *r, const fd_rslot *x, const uint8_t *reply, size_t rlen,
                      PyObject *verdict, PyObject *answered) {
    const struct fd_query *fq = &x->q;
    if (x->first || r->stored == NULL ||
        !fd_tally_answer(&r->tally, fq->qtype, fq->do_bit, reply[3], x->qlen,
                         (size_t)PyBytes_GET_SIZE(answered), r->now - x->t0, r->now - x->sent))
        return 0;
    PyObject *t = Py_BuildValue("(Ky#iy#NN)", x->seq, (const char *)fq->key,
                                (Py_ssize_t)fq->key_len, (int)fq->qend, (const char *)reply,
                                (Py_ssize_t)rlen, verdict, answered);
    if (t == NULL) return -1; /* (verdict and answered are released with it) */
    int rc = PyList_Append(r->stored, t);
    Py_DECREF(t);
    return rc < 0 ? -1 : 1;
}

/* An item for Python (relay.h); 0, or -1 with an error set. */
static int put_item(fd_relay *r, PyObject *items, int kind, const fd_rslot *x,
                    const uint8_t *reply, size_t rlen) {
    PyObject *answered = NULL; /* the reply sent from here, or NULL */
    PyObject *verdict = kind == FD_RELAY_REPLY && reply != NULL
                            ? verdict_of(r, x, reply, rlen, &answered)
                            : Py_NewRef(Py_False);
    if (verdict == NULL) {
        Py_XDECREF(answered);
        return -1;
    }
    if (answered != NULL) {
        int done = put_stored(r, x, reply, rlen, verdict, answered);
        if (done != 0) return done < 0 ? -1 : 0;
    }
    PyObject *t = PyTuple_New(10);
    if (t == NULL) {
        Py_DECREF(verdict);
        Py_XDECREF(answered);
        return -1;
    }
    PyObject *k = PyLong_FromLong(kind);
    PyObject *seq = PyLong_FromUnsignedLongLong(x->seq);
    PyObject *q = PyBytes_FromStringAndSize((const char *)x->query, x->qlen);
    PyObject *rep = reply != NULL ? PyBytes_FromStringAndSize((const char *)reply, (Py_ssize_t)rlen)
                                  : Py_NewRef(Py_None);
    PyObject *a = fd_addr_tuple(&x->addr, x->alen);
    PyObject *t0 = PyFloat_FromDouble(x->t0);
    PyObject *sent = PyFloat_FromDouble(x->sent);
    /* the query as parsed here, which wire.py parses alike (the differential fuzz): Python
     * builds its Query from these fields instead of parsing again */
    const struct fd_query *fq = &x->q;
    PyObject *fields = Py_BuildValue(
        "(HHHHHHNHNBy#)", fq->id, fq->flags, fq->qname_len, fq->qtype, fq->qclass, fq->qend,
        PyBool_FromLong(fq->has_opt), fq->udp_size, PyBool_FromLong(fq->do_bit),
        fq->edns_version, (const char *)fq->key, (Py_ssize_t)fq->key_len);
    PyTuple_SET_ITEM(t, 0, k);
    PyTuple_SET_ITEM(t, 1, seq);
    PyTuple_SET_ITEM(t, 2, q);
    PyTuple_SET_ITEM(t, 3, rep);
    PyTuple_SET_ITEM(t, 4, a);
    PyTuple_SET_ITEM(t, 5, t0);
    PyTuple_SET_ITEM(t, 6, sent);
    PyTuple_SET_ITEM(t, 7, fields);
    PyTuple_SET_ITEM(t, 8, verdict);
    PyTuple_SET_ITEM(t, 9, answered != NULL ? answered : Py_NewRef(Py_None));
    if (!k || !seq || !q || !rep || !a || !t0 || !sent || !fields ||
        PyList_Append(items, t) < 0) {
        Py_DECREF(t);
        return -1;
    }
    Py_DECREF(t);
    return 0;
}

/* The socket failed (an ICMP error, a send refused): its queries go up as failures, and it
 * is closed (upsock.py broken). */
static int fail_sock(fd_relay *r, fd_usock *s, PyObject *items) {
    int rc = 0;
    while (s->npend > 0) {
        uint32_t i = s->slot[s->npend - 1];
        s->npend--;
        int kind = r->slots[i].late ? FD_RELAY_LATE_ERROR : FD_RELAY_ERROR;
        if (rc == 0 && put_item(r, items, kind, &r->slots[i], NULL, 0) < 0) rc = -1;
        r->c.failed++;
        unlink_slot(r, i);
    }
    close_sock(r, s);
    return rc;
}

/* ------------------------------------------------------------------------- the policy */

int fd_relay_policy(fd_relay *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "relay_policy(server, timeout, deadline, mark, "
                                         "endings, suffix, ipv6_local, native, nss)");
        return -1;
    }
    int native = args[7] != Py_None, first = 0, ndots = 1, driver = 0;
    size_t ntypes = 0, nspecial = 0;
    uint16_t types[FD_RELAY_MAX_TYPES] = {0};
    uint8_t special[FD_RELAY_MAX_SPECIAL][FD_RELAY_SPECIAL_MAX] = {{0}};
    uint8_t special_len[FD_RELAY_MAX_SPECIAL] = {0};
    if (native) {
        PyObject *tys, *sp;
        if (!PyArg_ParseTuple(args[7], "O!pip" "O!", &PyTuple_Type, &tys, &first, &ndots,
                              &driver, &PyTuple_Type, &sp))
            return -1;
        if (PyTuple_GET_SIZE(tys) > FD_RELAY_MAX_TYPES ||
            PyTuple_GET_SIZE(sp) > FD_RELAY_MAX_SPECIAL) {
            PyErr_SetString(PyExc_ValueError, "too many native types or special names");
            return -1;
        }
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tys); i++) {
            long t = PyLong_AsLong(PyTuple_GET_ITEM(tys, i));
            if (t == -1 && PyErr_Occurred()) return -1;
            if (t < 0 || t > 65535) {
                PyErr_SetString(PyExc_ValueError, "a type is 0..65535");
                return -1;
            }
            types[ntypes++] = (uint16_t)t;
        }
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(sp); i++) {
            PyObject *e = PyTuple_GET_ITEM(sp, i);
            if (!PyBytes_Check(e) || PyBytes_GET_SIZE(e) < 1 ||
                PyBytes_GET_SIZE(e) > FD_RELAY_SPECIAL_MAX) {
                PyErr_SetString(PyExc_ValueError, "a special name is 1..63 bytes");
                return -1;
            }
            memcpy(special[nspecial], PyBytes_AS_STRING(e), (size_t)PyBytes_GET_SIZE(e));
            special_len[nspecial++] = (uint8_t)PyBytes_GET_SIZE(e);
        }
    }
    int nss = PyObject_IsTrue(args[8]);
    if (nss < 0) return -1;
    PyObject *const *a = args; /* server, timeout, deadline, mark, endings, suffix, ipv6 */
    double deadline = PyFloat_AsDouble(a[2]);
    if (deadline == -1.0 && PyErr_Occurred()) return -1;
    PyObject *rest[6] = {a[0], a[1], a[3], a[4], a[5], a[6]};
    args = rest;
    int enabled = args[0] != Py_None && args[3] != Py_None;
    struct sockaddr_storage server;
    socklen_t server_len = 0;
    int family = 0;
    memset(&server, 0, sizeof(server));
    if (args[0] != Py_None) {
        const char *host;
        int port;
        if (!PyArg_ParseTuple(args[0], "si", &host, &port)) return -1;
        if (port < 1 || port > 65535) {
            PyErr_SetString(PyExc_ValueError, "port must be 1..65535");
            return -1;
        }
        struct sockaddr_in *v4 = (struct sockaddr_in *)&server;
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&server;
        if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
            v4->sin_family = family = AF_INET;
            v4->sin_port = htons((uint16_t)port);
            server_len = sizeof(*v4);
        } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
            v6->sin6_family = family = AF_INET6;
            v6->sin6_port = htons((uint16_t)port);
            server_len = sizeof(*v6);
        } else {
            enabled = 0; /* a scoped address and such: Python's lane */
        }
    }
    double timeout = PyFloat_AsDouble(args[1]);
    if (timeout == -1.0 && PyErr_Occurred()) return -1;
    if (!(timeout > 0) || !(deadline >= timeout)) {
        PyErr_SetString(PyExc_ValueError, "timeout must be > 0 and deadline >= timeout");
        return -1;
    }
    unsigned long mark = PyLong_AsUnsignedLong(args[2]);
    if (mark == (unsigned long)-1 && PyErr_Occurred()) return -1;
    size_t nendings = 0;
    uint8_t endings[FD_RELAY_MAX_ENDINGS][FD_RELAY_ENDING_MAX] = {{0}};
    uint8_t ending_len[FD_RELAY_MAX_ENDINGS] = {0};
    if (args[3] != Py_None) {
        if (!PyTuple_Check(args[3])) {
            PyErr_SetString(PyExc_TypeError, "endings must be a tuple of bytes or None");
            return -1;
        }
        Py_ssize_t n = PyTuple_GET_SIZE(args[3]);
        if (n > FD_RELAY_MAX_ENDINGS) enabled = 0; /* too many to scan per query */
        for (Py_ssize_t i = 0; i < n && enabled; i++) {
            PyObject *e = PyTuple_GET_ITEM(args[3], i);
            if (!PyBytes_Check(e)) {
                PyErr_SetString(PyExc_TypeError, "endings must be a tuple of bytes or None");
                return -1;
            }
            Py_ssize_t len = PyBytes_GET_SIZE(e);
            if (len < 1 || len > FD_RELAY_ENDING_MAX) {
                enabled = 0;
                break;
            }
            memcpy(endings[nendings], PyBytes_AS_STRING(e), (size_t)len);
            ending_len[nendings++] = (uint8_t)len;
        }
    }
    if (!PyBytes_Check(args[4]) || PyBytes_GET_SIZE(args[4]) > FD_MAX_NAME + 1) {
        PyErr_SetString(PyExc_TypeError, "suffix must be bytes of a wire name");
        return -1;
    }
    int ipv6_local = PyObject_IsTrue(args[5]);
    if (ipv6_local < 0) return -1;
    /* A new upstream: the ports connected to the old one take no new query. */
    if (!enabled || family != r->family || server_len != r->server_len ||
        memcmp(&server, &r->server, server_len) != 0) {
        for (int i = 0; i < FD_RELAY_POOL; i++)
            if (r->pool[i] != NULL) retire(r, r->pool[i]);
    }
    r->enabled = enabled;
    r->family = family;
    r->server = server;
    r->server_len = server_len;
    r->timeout = timeout;
    r->deadline = deadline;
    r->mark = (uint32_t)mark;
    r->nendings = enabled ? nendings : 0;
    memcpy(r->endings, endings, sizeof(endings));
    memcpy(r->ending_len, ending_len, sizeof(ending_len));
    r->suffix_len = (size_t)PyBytes_GET_SIZE(args[4]);
    memcpy(r->suffix, PyBytes_AS_STRING(args[4]), r->suffix_len);
    r->ipv6_local = ipv6_local;
    r->native = native;
    r->first = first;
    r->ndots = ndots;
    r->driver = driver;
    r->nss = nss;
    r->ntypes = ntypes;
    r->nspecial = nspecial;
    memcpy(r->types, types, sizeof(types));
    memcpy(r->special, special, sizeof(special));
    memcpy(r->special_len, special_len, sizeof(special_len));
    return 0;
}

/* ------------------------------------------------------------------------- the three paths */

static int ends_with(const uint8_t *name, size_t n, const uint8_t *end, size_t m) {
    return n >= m && memcmp(name + n - m, end, m) == 0;
}

static const uint8_t LOCAL[] = {5, 'l', 'o', 'c', 'a', 'l', 0}; /* nss.py LOCAL_SUFFIX */

/* What the native path would make of q (resolver.py): the reason it declines it (relayed
 * raw, counted), -1 when it lets it go raw first (forward_first), -2 when c-ares must ask it
 * (Python's). `name` is the lower-cased wire name. */
static int native_verdict(const fd_relay *r, const struct fd_query *q, const uint8_t *name) {
    int known = 0;
    for (size_t i = 0; i < r->ntypes; i++) known |= r->types[i] == q->qtype;
    if (!known) return FD_RELAY_UNSUPPORTED; /* (another class never gets here) */
    if (q->do_bit || (q->flags & 0x0010)) return FD_RELAY_DNSSEC; /* DO or CD */
    if (!r->driver) return FD_RELAY_DISABLED;
    if (!r->first) return -2;
    size_t i = 0, last = 0;
    int labels = 0;
    while (i < q->qname_len && name[i] != 0) {
        last = i;
        i += (size_t)name[i] + 1;
        labels++;
    }
    if (labels <= r->ndots) return -2; /* c-ares tries the search list first */
    size_t tld = name[last];
    for (size_t k = 0; k < r->nspecial; k++)
        if (labels > 0 && tld == r->special_len[k] && memcmp(name + last + 1, r->special[k], tld) == 0)
            return -2; /* localhost, .onion: c-ares answers them without DNS */
    return -1;
}

int fd_relay_take(fd_relay *r, const uint8_t *buf, size_t len,
                  const struct sockaddr_storage *sa, socklen_t salen, double t0,
                  PyObject *items) {
    if (!r->enabled || len > FD_RELAY_MAX_QUERY || r->nfree == 0) {
        if (r->enabled && r->nfree == 0) r->c.full++;
        return 0;
    }
    uint32_t i = r->free[r->nfree - 1];
    fd_rslot *x = &r->slots[i];
    struct fd_query *q = &x->q;
    /* What answer_now, the cache and the lane's own checks would keep for Python
     * (fastdns/resolve/pipeline.py, relay.py): another class, an EDNS version, AAAA answered
     * locally, a name that may be static or a loop probe, a cached key. */
    if (fd_parse_query(buf, len, q) != FD_QUERY_OK || q->qclass != 1 || q->edns_version != 0 ||
        (r->ipv6_local && q->qtype == 28))
        return 0;
    const uint8_t *name = q->key; /* the lower-cased wire name comes first */
    size_t nlen = q->qname_len;
    for (size_t e = 0; e < r->nendings; e++)
        if (ends_with(name, nlen, r->endings[e], r->ending_len[e])) return 0;
    if (r->suffix_len && ends_with(name, nlen, r->suffix, r->suffix_len)) return 0;
    if (fd_keys_has(&r->keys, q->key, q->key_len)) return 0;
    /* NSS before DNS for .local addresses (nss.py first) */
    if (r->nss && (q->qtype == 1 || q->qtype == 28) && !q->do_bit && !(q->flags & 0x0010) &&
        ends_with(name, nlen, LOCAL, sizeof(LOCAL)))
        return 0;
    int declined = -1;
    if (r->native) {
        declined = native_verdict(r, q, name);
        if (declined == -2) return 0;
    }
    uint64_t h = fd_hash(q->key, q->key_len, r->keys.seed);
    size_t lj = lead_find(r, q, h);
    if (r->leaders[lj] != 0) { /* the same question is in flight: it waits for that one */
        fd_rslot *lead = &r->slots[r->leaders[lj] - 1];
        uint64_t seq = x->seq;
        x->seq = lead->seq;
        memcpy(&x->addr, sa, sizeof(*sa));
        x->alen = salen;
        x->qlen = (uint16_t)len;
        memcpy(x->query, buf, len);
        x->t0 = x->sent = t0;
        int rc = put_item(r, items, FD_RELAY_FOLLOW, x, NULL, 0);
        x->seq = seq;
        r->c.followed++;
        return rc < 0 ? -1 : 1;
    }
    fd_usock *s = pick(r, t0);
    if (s == NULL) return 0;
    if (declined >= 0) r->c.declined[declined]++;
    uint16_t uid;
    for (;;) { /* unique among the IDs awaited on this socket (at most USES) */
        uid = (uint16_t)next_rand(r);
        int clash = 0;
        for (int j = 0; j < s->npend; j++) clash |= s->uid[j] == uid;
        if (!clash) break;
    }
    r->nfree--;
    memcpy(&x->addr, sa, sizeof(*sa));
    x->alen = salen;
    x->used = 1;
    x->qlen = (uint16_t)len;
    x->uid = uid;
    memcpy(x->query, buf, len);
    x->t0 = x->sent = t0;
    x->expires = t0 + r->timeout;
    x->sock = s;
    x->late = 0;
    x->seq = r->seq++;
    x->khash = h;
    x->first = declined == -1 && r->native;
    enlist(r, i);
    r->leaders[lj] = i + 1;
    s->uid[s->npend] = uid;
    s->slot[s->npend] = i;
    s->npend++;
    r->c.relayed++;
    uint8_t out[FD_RELAY_MAX_QUERY];
    memcpy(out, buf, len);
    out[0] = (uint8_t)(uid >> 8);
    out[1] = (uint8_t)uid;
    ssize_t n;
    do {
        n = send(s->fd, out, len, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0) { /* an ICMP error from an earlier query, a full buffer: the socket's queries
                  * fail over (Relay.start: channel.broken) */
        r->c.send_errors++;
        return fail_sock(r, s, items) < 0 ? -1 : 1;
    }
    return 1;
}

int fd_relay_read(fd_relay *r, double now, PyObject *items) {
    r->now = now;
    struct epoll_event ev[EVENTS];
    int n;
    do {
        n = epoll_wait(r->epfd, ev, EVENTS, 0);
    } while (n < 0 && errno == EINTR);
    int rc = 0;
    for (int e = 0; e < n; e++) {
        fd_usock *s = ev[e].data.ptr;
        for (int k = 0; k < READ_BATCH; k++) {
            ssize_t len = recv(s->fd, r->rbuf, sizeof(r->rbuf), MSG_DONTWAIT);
            if (len < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                if (s->pool == -2) { /* a spare with an error left: not worth keeping */
                    for (size_t j = 0; j < r->nspares; j++)
                        if (r->spares[j] == s) r->spares[j] = r->spares[--r->nspares];
                    close_sock(r, s);
                } else {
                    if (fail_sock(r, s, items) < 0) rc = -1;
                }
                break;
            }
            if (s->pool == -2) continue; /* nothing is awaited on a spare */
            if (len < 12) continue;      /* no header: dropped (upsock.py received) */
            uint16_t uid = (uint16_t)(r->rbuf[0] << 8 | r->rbuf[1]);
            int j = 0;
            while (j < s->npend && s->uid[j] != uid) j++;
            if (j == s->npend) {
                r->c.unmatched++; /* late or spoofed */
                continue;
            }
            uint32_t i = s->slot[j];
            fd_rslot *x = &r->slots[i];
            if (!fd_question_matches(r->rbuf, (size_t)len, x->query, &x->q)) {
                r->c.mismatched++; /* never an answer */
                continue;
            }
            sock_forget(s, j);
            int kind = x->late ? FD_RELAY_LATE : FD_RELAY_REPLY;
            if (rc == 0 && put_item(r, items, kind, x, r->rbuf, (size_t)len) < 0) rc = -1;
            if (!x->late) r->c.answered++;
            unlink_slot(r, i);
            if (s->npend == 0) { /* nothing more is due: spare the EAGAIN read */
                if (s->pool == -1) release(r, s);
                break;
            }
        }
    }
    return rc;
}

/* Slot i is done with: its ID no longer awaited, the slot free, its socket released when
 * it was retired and nothing else waits on it. */
static void forget(fd_relay *r, uint32_t i) {
    fd_usock *s = r->slots[i].sock;
    unlink_slot(r, i);
    if (s == NULL) return;
    for (int j = 0; j < s->npend; j++)
        if (s->slot[j] == i) {
            sock_forget(s, j);
            break;
        }
    if (s->npend == 0 && s->pool == -1) release(r, s);
}

int fd_relay_expire(fd_relay *r, double now, PyObject *items) {
    int rc = 0;
    while (r->head != FD_RELAY_NONE && r->slots[r->head].expires <= now) {
        uint32_t i = r->head;
        fd_rslot *x = &r->slots[i];
        if (rc == 0 && put_item(r, items, FD_RELAY_TIMEOUT, x, NULL, 0) < 0) rc = -1;
        r->c.timeouts++;
        if (x->sent + r->deadline > now) { /* its reply still answers, until the deadline */
            unlist(r, i);
            x->late = 1;
            x->expires = x->sent + r->deadline;
            enlist(r, i);
        } else {
            forget(r, i);
        }
    }
    while (r->lhead != FD_RELAY_NONE && r->slots[r->lhead].expires <= now) forget(r, r->lhead);
    return rc;
}

double fd_relay_next_expiry(const fd_relay *r) {
    double a = r->head == FD_RELAY_NONE ? -1.0 : r->slots[r->head].expires;
    double b = r->lhead == FD_RELAY_NONE ? -1.0 : r->slots[r->lhead].expires;
    return a < 0 ? b : b < 0 ? a : a < b ? a : b;
}

/* ------------------------------------------------------------------------- life */

int fd_relay_init(fd_relay *r, uint32_t cap, uint64_t seed) {
    memset(r, 0, offsetof(fd_relay, verdict_room));
    memset(&r->c, 0, offsetof(fd_relay, rbuf) - offsetof(fd_relay, c));
    r->epfd = -1;
    r->head = r->tail = r->lhead = r->ltail = FD_RELAY_NONE;
    r->rng = seed;
    r->cap = cap;
    r->lcap = 16;
    while (r->lcap < 2 * (size_t)cap) r->lcap *= 2; /* at most half full */
    r->slots = PyMem_Calloc(cap, sizeof(fd_rslot));
    r->free = PyMem_Calloc(cap, sizeof(uint32_t));
    r->leaders = PyMem_Calloc(r->lcap, sizeof(uint32_t));
    if (r->slots == NULL || r->free == NULL || r->leaders == NULL) {
        PyMem_Free(r->slots);
        PyMem_Free(r->free);
        PyMem_Free(r->leaders);
        r->slots = NULL;
        r->free = NULL;
        r->leaders = NULL;
        PyErr_NoMemory();
        return -1;
    }
    for (uint32_t i = 0; i < cap; i++) r->free[i] = cap - 1 - i;
    r->nfree = cap;
    if (fd_keys_init(&r->keys, seed ^ 0xD6E8FEB86659FD93ULL) < 0) {
        fd_relay_free(r);
        return -1;
    }
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (r->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        fd_relay_free(r);
        return -1;
    }
    r->stored = PyList_New(0);
    if (r->stored == NULL) {
        fd_relay_free(r);
        return -1;
    }
    return 0;
}

void fd_relay_free(fd_relay *r) {
    r->enabled = 0;
    /* every socket: the retired ones still awaited (found through their slots), the pool's,
     * the spares */
    if (r->slots != NULL) { /* retired sockets are known only through their slots */
        size_t n = 0, k = 0;
        for (uint32_t i = 0; i < r->cap; i++) {
            fd_usock *s = r->slots[i].used ? r->slots[i].sock : NULL;
            if (s != NULL && s->pool == -1) {
                s->pool = -3; /* counted once */
                n++;
            }
        }
        fd_usock **gone = n ? PyMem_Calloc(n, sizeof(fd_usock *)) : NULL;
        for (uint32_t i = 0; i < r->cap; i++) {
            fd_usock *s = r->slots[i].used ? r->slots[i].sock : NULL;
            r->slots[i].sock = NULL;
            if (s == NULL || s->pool != -3) continue;
            s->pool = -4;
            if (gone != NULL) gone[k++] = s;
            else { /* no memory for the list: its descriptor at least is closed */
                epoll_ctl(r->epfd, EPOLL_CTL_DEL, s->fd, NULL);
                close(s->fd);
                r->open--;
            }
        }
        for (size_t i = 0; i < k; i++) close_sock(r, gone[i]);
        PyMem_Free(gone);
    }
    for (int i = 0; i < FD_RELAY_POOL; i++)
        if (r->pool[i] != NULL) close_sock(r, r->pool[i]);
    for (size_t i = 0; i < r->nspares; i++) close_sock(r, r->spares[i]);
    r->nspares = 0;
    if (r->epfd >= 0) close(r->epfd);
    r->epfd = -1;
    PyMem_Free(r->slots);
    PyMem_Free(r->free);
    PyMem_Free(r->leaders);
    r->slots = NULL;
    r->free = NULL;
    r->leaders = NULL;
    r->nfree = r->inflight = r->nlate = 0;
    r->head = r->tail = r->lhead = r->ltail = FD_RELAY_NONE;
    fd_keys_free(&r->keys);
    Py_CLEAR(r->stored);
}
