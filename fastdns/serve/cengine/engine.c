/* The Engine type: a worker's UDP socket read with recvmmsg and written with sendmmsg.
 *
 * Per wakeup (on_readable): one recvmmsg of up to `batch` datagrams; a datagram from a source
 * known to pass the gate (sources.h) whose bytes after the ID are a ready form (forms.h), still
 * exact (now < until), is answered here: the query's ID + the form's body, queued; every other
 * datagram goes up to Python through one call, upcall(data, addr), in arrival order. Replies
 * Python sends during the upcalls (sendto) join the queue; one sendmmsg sends it at the end.
 * A reply that finds the socket buffer full waits in a bounded backlog (MAX_BACKLOG, as
 * fastdns/serve/udp.py) until on_writable; beyond it, it is dropped and counted.
 *
 * Decisions stay in Python (docs/datapath.md): which forms exist and until when, which sources
 * pass. Every packet byte read here is bounds-checked (a form is looked up only for a datagram
 * of at least 3 bytes, with its length); every structure is allocated once, bounded.
 */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "addr.h"
#include "forms.h"
#include "relay.h"
#include "sources.h"
#include "wirebind.h" /* fd_cache_cfg_from */

#define MAX_DATAGRAM 65535          /* as udp.py: a query is read whole whatever its size */
#define SLOT_STRIDE (65536 + 128)   /* receive slots, staggered so their heads share no set */
#define MAX_BACKLOG 4096            /* udp.py MAX_BACKLOG */
#define MAX_BATCH 1024              /* fastdns.datapath_batch's upper bound */
#define BACKLOG_CHUNK 64            /* backlog replies per sendmmsg in on_writable */
#define DEFAULT_FORMS (8192 + 1024) /* FrontTable CAPACITY + slack for install-then-evict */

/* One reply to send: a hit (the query's ID + form->body) or Python's bytes. */
typedef struct {
    struct sockaddr_storage addr;
    socklen_t alen;
    unsigned char id[2];
    fd_form *form;  /* a hit: a reference */
    PyObject *data; /* Python's reply: a reference */
} fd_out;

typedef struct {
    unsigned long long datagrams, recv_calls, answered, upcalls, send_calls, sent, send_errors,
        backlog_drops;
} fd_counters;

typedef struct {
    PyObject_HEAD int fd;
    int family;
    int batch;
    PyObject *upcall, *want_write;
    /* the address tuple of the last upcall and its sockaddr: sendto to it needs no parse */
    PyObject *last_addr;
    struct sockaddr_storage last_sa;
    socklen_t last_salen;
    /* receiving */
    unsigned char *rbuf;
    size_t rbuf_len;
    struct mmsghdr *rmsgs;
    struct iovec *riov;
    struct sockaddr_storage *raddr;
    /* the replies of this batch */
    fd_out *pending;
    size_t npending, nhits, pcap;
    struct mmsghdr *smsgs;
    struct iovec *siov;
    /* replies waiting for a full socket buffer: a ring */
    fd_out *backlog;
    size_t bhead, bcount;
    fd_forms forms;
    fd_sources sources;
    fd_counters c;
    double t0;
    int busy, flushing, closing, closed;
    int fail_errno; /* tests (_fail_sends): the next fail_count sends fail with fail_errno */
    unsigned int fail_count;
    PyObject *err_type, *err_value, *err_tb; /* the first exception of a batch */
    /* misses relayed in C (relay.h), when made with `relayed`: its outcomes go up in one
     * list per wakeup to relayed(items); arm(when) asks for a call of expire() then */
    fd_relay *relay;
    PyObject *relayed, *arm, *items;
    int armed;
} Engine;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* what time.monotonic() reads */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A send the tests made fail (_fail_sends): -1 with errno set. */
static int failed_send(Engine *self) {
    if (self->fail_count == 0) return 0;
    self->fail_count--;
    errno = self->fail_errno;
    return 1;
}

static void out_release(fd_out *o) {
    if (o->form != NULL) fd_form_decref(o->form);
    Py_XDECREF(o->data);
    o->form = NULL;
    o->data = NULL;
}

/* Keep the first exception of a batch to raise after it is flushed; report later ones. */
static void keep_error(Engine *self, PyObject *where) {
    if (self->err_type == NULL) {
        PyErr_Fetch(&self->err_type, &self->err_value, &self->err_tb);
        if (self->err_type == NULL) { /* a NULL without an exception: should not happen */
            self->err_type = Py_NewRef(PyExc_SystemError);
        }
    } else {
        PyErr_WriteUnraisable(where);
    }
}

static PyObject *raise_kept(Engine *self) {
    if (self->err_type == NULL) Py_RETURN_NONE;
    PyErr_Restore(self->err_type, self->err_value, self->err_tb);
    self->err_type = self->err_value = self->err_tb = NULL;
    return NULL;
}

static void release(Engine *self) {
    if (self->relay != NULL) {
        fd_relay_free(self->relay);
        PyMem_Free(self->relay);
        self->relay = NULL;
    }
    Py_CLEAR(self->relayed);
    Py_CLEAR(self->arm);
    Py_CLEAR(self->items);
    fd_forms_free(&self->forms);
    fd_sources_free(&self->sources);
    if (self->pending != NULL)
        for (size_t i = 0; i < self->npending; i++) out_release(&self->pending[i]);
    self->npending = self->nhits = 0;
    if (self->backlog != NULL)
        for (size_t i = 0; i < self->bcount; i++)
            out_release(&self->backlog[(self->bhead + i) % MAX_BACKLOG]);
    self->bcount = self->bhead = 0;
    if (self->rbuf != NULL) munmap(self->rbuf, self->rbuf_len);
    self->rbuf = NULL;
    PyMem_Free(self->rmsgs);
    PyMem_Free(self->riov);
    PyMem_Free(self->raddr);
    PyMem_Free(self->pending);
    PyMem_Free(self->smsgs);
    PyMem_Free(self->siov);
    PyMem_Free(self->backlog);
    self->rmsgs = NULL;
    self->riov = NULL;
    self->raddr = NULL;
    self->pending = NULL;
    self->smsgs = NULL;
    self->siov = NULL;
    self->backlog = NULL;
    Py_CLEAR(self->upcall);
    Py_CLEAR(self->want_write);
    Py_CLEAR(self->last_addr);
    self->closed = 1;
}

/* ------------------------------------------------------------------------- sending */

/* Into the backlog (the reference moves), or dropped and counted when it is full.
 * 1 when the backlog was empty before. */
static int backlog_push(Engine *self, fd_out *o) {
    if (self->bcount >= MAX_BACKLOG) {
        self->c.backlog_drops++;
        self->c.send_errors++;
        out_release(o);
        return 0;
    }
    self->backlog[(self->bhead + self->bcount) % MAX_BACKLOG] = *o;
    o->form = NULL;
    o->data = NULL;
    return self->bcount++ == 0;
}

static void fill_msg(struct mmsghdr *m, struct iovec *iov, fd_out *o) {
    memset(m, 0, sizeof(*m));
    if (o->form != NULL) {
        iov[0].iov_base = o->id;
        iov[0].iov_len = 2;
        iov[1].iov_base = o->form->body;
        iov[1].iov_len = o->form->blen;
        m->msg_hdr.msg_iovlen = 2;
    } else {
        iov[0].iov_base = PyBytes_AS_STRING(o->data);
        iov[0].iov_len = (size_t)PyBytes_GET_SIZE(o->data);
        m->msg_hdr.msg_iovlen = 1;
    }
    m->msg_hdr.msg_iov = iov;
    m->msg_hdr.msg_name = &o->addr;
    m->msg_hdr.msg_namelen = o->alen;
}

static void call_want_write(Engine *self) {
    if (self->want_write == NULL) return;
    PyObject *r = PyObject_CallNoArgs(self->want_write);
    if (r == NULL)
        keep_error(self, self->want_write);
    else
        Py_DECREF(r);
}

/* Send this batch's replies with sendmmsg and account its hits. Only while busy (inside
 * on_readable). */
static void flush(Engine *self) {
    size_t k = self->npending, i = 0;
    if (k == 0) return;
    self->flushing = 1;
    if (self->bcount == 0) { /* else everything waits behind the backlog, in order */
        for (size_t j = 0; j < k; j++)
            fill_msg(&self->smsgs[j], &self->siov[2 * j], &self->pending[j]);
        while (i < k) {
            int r = failed_send(self) ? -1
                                      : sendmmsg(self->fd, &self->smsgs[i],
                                                 (unsigned int)(k - i), MSG_DONTWAIT);
            self->c.send_calls++;
            if (r > 0) {
                self->c.sent += (unsigned long long)r;
                i += (size_t)r;
            } else if (r < 0 && errno == EINTR) {
                continue;
            } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                break;
            } else { /* this reply failed (sendmmsg reports the first one's error) */
                self->c.send_errors++;
                i++;
            }
        }
    }
    /* The hits of this batch: each took from just before the recvmmsg to now; one slower
     * than the first duration bucket is counted in its slot, folded as Python observes. */
    double secs = now() - self->t0;
    for (size_t j = 0; j < k; j++) {
        fd_form *f = self->pending[j].form;
        if (f != NULL) fd_forms_count(&self->forms, f, self->t0, secs);
    }
    int wake = 0;
    for (size_t j = 0; j < k; j++) {
        if (j < i)
            out_release(&self->pending[j]);
        else
            wake |= backlog_push(self, &self->pending[j]);
    }
    self->npending = self->nhits = 0;
    if (wake) call_want_write(self);
    self->flushing = 0;
}

/* ------------------------------------------------------------------------- receiving */

static void deliver(Engine *self);

static void upcall(Engine *self, const unsigned char *buf, size_t len,
                   const struct sockaddr_storage *sa, socklen_t salen) {
    self->c.upcalls++;
    if (self->upcall == NULL) return;
    PyObject *data = PyBytes_FromStringAndSize((const char *)buf, (Py_ssize_t)len);
    if (data == NULL) {
        keep_error(self, self->upcall);
        return;
    }
    PyObject *addr = fd_addr_tuple(sa, salen);
    if (addr == NULL) {
        Py_DECREF(data);
        keep_error(self, self->upcall);
        return;
    }
    Py_XSETREF(self->last_addr, Py_NewRef(addr));
    memcpy(&self->last_sa, sa, sizeof(*sa));
    self->last_salen = salen;
    PyObject *args[3] = {NULL, data, addr};
    PyObject *callable = Py_NewRef(self->upcall); /* the upcall may close the engine */
    PyObject *r =
        PyObject_Vectorcall(callable, args + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL)
        keep_error(self, callable);
    else
        Py_DECREF(r);
    Py_DECREF(callable);
    Py_DECREF(data);
    Py_DECREF(addr);
}

/* A hit to answer here, or 0: upcall. */
static int passes(Engine *self, const struct sockaddr_storage *sa) {
    uint8_t family, key[16];
    return fd_addr_key(sa, &family, key) && fd_sources_has(&self->sources, family, key);
}

static fd_form *ready_form(Engine *self, const unsigned char *buf, size_t len) {
    if (len < 3 || self->forms.count == 0) return NULL;
    fd_form *f = fd_forms_get(&self->forms, buf + 2, len - 2);
    if (f == NULL || !(self->t0 < f->until)) return NULL;
    if (!fd_forms_countable(&self->forms, f, self->nhits)) return NULL;
    /* The entry's age, as PacketCache reads it (int(now - stored)); every hit of a batch
     * has the batch's (a reply still waiting in the backlog goes out with the TTLs of the
     * batch that sends it: the body is shared, never rewritten during a sendmmsg). */
    long long age = self->t0 > f->stored ? (long long)(self->t0 - f->stored) : 0;
    if (age != f->stamp) fd_form_retime(f, age);
    return f;
}

static PyObject *Engine_on_readable(Engine *self, PyObject *Py_UNUSED(ignored)) {
    if (self->closed || self->busy || self->rbuf == NULL) Py_RETURN_NONE;
    Py_INCREF(self);
    self->busy = 1;
    for (int i = 0; i < self->batch; i++) {
        self->rmsgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
        self->rmsgs[i].msg_hdr.msg_flags = 0;
    }
    self->t0 = now();
    int n;
    do {
        n = recvmmsg(self->fd, self->rmsgs, (unsigned int)self->batch, MSG_DONTWAIT, NULL);
    } while (n < 0 && errno == EINTR);
    self->c.recv_calls++;
    /* n < 0: nothing to read, or an error queued on the socket, now consumed (as udp.py) */
    for (int i = 0; i < n && !self->closing; i++) {
        const unsigned char *buf = self->rbuf + (size_t)i * SLOT_STRIDE;
        size_t len = self->rmsgs[i].msg_len;
        const struct sockaddr_storage *sa = &self->raddr[i];
        self->c.datagrams++;
        int pass = self->sources.count > 0 && passes(self, sa);
        fd_form *f = pass ? ready_form(self, buf, len) : NULL;
        if (f == NULL) {
            socklen_t salen = self->rmsgs[i].msg_hdr.msg_namelen;
            int taken = pass && self->relay != NULL && self->items != NULL
                            ? fd_relay_take(self->relay, buf, len, sa, salen, self->t0,
                                            self->items)
                            : 0;
            if (taken < 0) keep_error(self, self->relayed);
            if (taken == 0) upcall(self, buf, len, sa, salen);
            continue;
        }
        if (self->npending >= self->pcap) flush(self);
        fd_out *o = &self->pending[self->npending++];
        memcpy(&o->addr, sa, sizeof(*sa));
        o->alen = self->rmsgs[i].msg_hdr.msg_namelen;
        o->id[0] = buf[0];
        o->id[1] = buf[1];
        fd_form_incref(f);
        o->form = f;
        o->data = NULL;
        self->nhits++;
        self->c.answered++;
    }
    deliver(self);
    flush(self);
    self->busy = 0;
    if (self->closing && !self->closed) release(self);
    PyObject *r = raise_kept(self);
    Py_DECREF(self);
    return r;
}

/* ------------------------------------------------------------------------- the relay */

/* The relay's outcomes of this wakeup up to Python in one call (its replies join the batch),
 * and a timer asked for when queries wait and none is armed. Only while busy. */
static void deliver(Engine *self) {
    fd_relay *r = self->relay;
    if (r == NULL || self->items == NULL || r->stored == NULL) return;
    if (PyList_GET_SIZE(self->items) > 0 || PyList_GET_SIZE(r->stored) > 0) {
        PyObject *items = self->items, *stored = r->stored;
        self->items = PyList_New(0);
        r->stored = PyList_New(0);
        PyObject *callable = Py_NewRef(self->relayed);
        PyObject *args[3] = {NULL, items, stored};
        PyObject *res =
            PyObject_Vectorcall(callable, args + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (res == NULL)
            keep_error(self, callable);
        else
            Py_DECREF(res);
        Py_DECREF(callable);
        Py_DECREF(items);
        Py_DECREF(stored);
        if (self->items == NULL) {
            keep_error(self, self->relayed);
            return;
        }
        r = self->relay; /* the call may have closed the engine */
        if (r == NULL) return;
        if (r->stored == NULL) {
            keep_error(self, self->relayed);
            return;
        }
    }
    if (!self->armed && (r->inflight > 0 || r->nlate > 0) && self->arm != NULL) {
        self->armed = 1;
        PyObject *when = PyFloat_FromDouble(fd_relay_next_expiry(r));
        PyObject *res = when != NULL ? PyObject_CallOneArg(self->arm, when) : NULL;
        Py_XDECREF(when);
        if (res == NULL)
            keep_error(self, self->arm);
        else
            Py_DECREF(res);
    }
}

static PyObject *relay_wakeup(Engine *self, int expire) {
    if (self->closed || self->busy || self->relay == NULL) Py_RETURN_NONE;
    Py_INCREF(self);
    self->busy = 1;
    self->t0 = now();
    if (expire) self->armed = 0;
    int rc = expire ? fd_relay_expire(self->relay, self->t0, self->items)
                    : fd_relay_read(self->relay, self->t0, self->items);
    if (rc < 0) keep_error(self, self->relayed);
    deliver(self);
    flush(self);
    self->busy = 0;
    double next = -1.0;
    if (expire && self->relay != NULL && !self->closing) {
        next = fd_relay_next_expiry(self->relay);
        self->armed = next >= 0; /* the caller arms its timer for `next` */
    }
    if (self->closing && !self->closed) release(self);
    PyObject *r = raise_kept(self);
    Py_DECREF(self);
    if (r == NULL || !expire) return r;
    Py_DECREF(r);
    if (next < 0) Py_RETURN_NONE;
    return PyFloat_FromDouble(next);
}

static PyObject *Engine_on_upstream(Engine *self, PyObject *Py_UNUSED(ignored)) {
    return relay_wakeup(self, 0);
}

static PyObject *Engine_expire(Engine *self, PyObject *Py_UNUSED(ignored)) {
    return relay_wakeup(self, 1);
}

static PyObject *Engine_relay_policy(Engine *self, PyObject *const *args, Py_ssize_t nargs) {
    if (self->relay == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this engine was made without a relay");
        return NULL;
    }
    if (fd_relay_policy(self->relay, args, nargs) < 0) return NULL;
    Py_RETURN_NONE;
}

/* A reply the relay built and sends to a client (relay.h emit): it joins this batch. */
static void relay_emit(void *ctx, const struct sockaddr_storage *sa, socklen_t salen,
                       PyObject *data) {
    Engine *self = ctx;
    if (!self->busy || self->closing) return;
    if (self->npending >= self->pcap) flush(self);
    fd_out *o = &self->pending[self->npending++];
    memset(o, 0, sizeof(*o));
    memcpy(&o->addr, sa, sizeof(*sa));
    o->alen = salen;
    o->data = Py_NewRef(data);
}

static PyObject *Engine_relay_tallies(Engine *self, PyObject *Py_UNUSED(ignored)) {
    if (self->relay == NULL) return Py_BuildValue("([][])");
    return fd_tallies_fold(&self->relay->tally);
}

static PyObject *Engine_relay_render(Engine *self, PyObject *const *args, Py_ssize_t nargs) {
    if (self->relay == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this engine was made without a relay");
        return NULL;
    }
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "relay_render(store | None, lima_compat, edns_max_udp)");
        return NULL;
    }
    if (args[0] == Py_None) {
        self->relay->render = 0;
        Py_RETURN_NONE;
    }
    fd_render_cfg cfg;
    if (fd_render_cfg_from(args[0], &cfg) < 0) return NULL;
    int compat = PyObject_IsTrue(args[1]);
    if (compat < 0) return NULL;
    long udp = PyLong_AsLong(args[2]);
    if (udp == -1 && PyErr_Occurred()) return NULL;
    if (udp < 512 || udp > 65535) {
        PyErr_SetString(PyExc_ValueError, "edns_max_udp must be 512..65535");
        return NULL;
    }
    fd_relay *r = self->relay;
    r->store = cfg;
    r->lima_compat = compat;
    r->edns_max_udp = (uint16_t)udp;
    r->emit = relay_emit;
    r->emit_ctx = self;
    r->render = 1;
    Py_RETURN_NONE;
}

static PyObject *Engine_relay_cache(Engine *self, PyObject *limits) {
    if (self->relay == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this engine was made without a relay");
        return NULL;
    }
    if (limits == Py_None) {
        self->relay->classify = 0;
        Py_RETURN_NONE;
    }
    fd_cache_cfg cfg;
    if (fd_cache_cfg_from(limits, &cfg) < 0) return NULL;
    self->relay->cache = cfg;
    self->relay->classify = 1;
    Py_RETURN_NONE;
}

static int key_arg(PyObject *key, const uint8_t **p, size_t *n) {
    if (!PyBytes_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "key must be bytes");
        return -1;
    }
    *p = (const uint8_t *)PyBytes_AS_STRING(key);
    *n = (size_t)PyBytes_GET_SIZE(key);
    return 0;
}

static PyObject *Engine_key_add(Engine *self, PyObject *key) {
    const uint8_t *p;
    size_t n;
    if (key_arg(key, &p, &n) < 0) return NULL;
    if (self->relay != NULL && fd_keys_add(&self->relay->keys, p, n) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Engine_key_discard(Engine *self, PyObject *key) {
    const uint8_t *p;
    size_t n;
    if (key_arg(key, &p, &n) < 0) return NULL;
    if (self->relay != NULL) fd_keys_discard(&self->relay->keys, p, n);
    Py_RETURN_NONE;
}

static PyObject *Engine_key_clear(Engine *self, PyObject *Py_UNUSED(ignored)) {
    if (self->relay != NULL) fd_keys_clear(&self->relay->keys);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------- Python's sends */

static PyObject *Engine_sendto(Engine *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "sendto(data, addr)");
        return NULL;
    }
    if (self->closed || self->closing || self->rbuf == NULL)
        Py_RETURN_NONE; /* closed: dropped, as udp.py's */
    fd_out o = {0};
    if (args[1] == self->last_addr) {
        memcpy(&o.addr, &self->last_sa, sizeof(o.addr));
        o.alen = self->last_salen;
    } else if (fd_addr_parse(args[1], self->family, &o.addr, &o.alen) < 0) {
        return NULL;
    }
    if (PyBytes_Check(args[0])) {
        o.data = Py_NewRef(args[0]);
    } else {
        o.data = PyBytes_FromObject(args[0]);
        if (o.data == NULL) return NULL;
    }
    if (self->busy && !self->flushing) { /* inside on_readable: joins its sendmmsg */
        if (self->npending >= self->pcap) flush(self);
        self->pending[self->npending++] = o;
        Py_RETURN_NONE;
    }
    if (self->bcount > 0) { /* behind the replies already waiting */
        backlog_push(self, &o);
        Py_RETURN_NONE;
    }
    ssize_t r;
    do {
        r = failed_send(self) ? -1
                              : sendto(self->fd, PyBytes_AS_STRING(o.data),
                                       (size_t)PyBytes_GET_SIZE(o.data), 0,
                                       (struct sockaddr *)&o.addr, o.alen);
    } while (r < 0 && errno == EINTR);
    if (r >= 0) {
        self->c.sent++;
        out_release(&o);
        Py_RETURN_NONE;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
        self->c.send_errors++;
        out_release(&o);
        Py_RETURN_NONE;
    }
    if (backlog_push(self, &o) && self->want_write != NULL) {
        PyObject *w = PyObject_CallNoArgs(self->want_write);
        if (w == NULL) return NULL;
        Py_DECREF(w);
    }
    Py_RETURN_NONE;
}

static PyObject *Engine_on_writable(Engine *self, PyObject *Py_UNUSED(ignored)) {
    if (self->closed || self->rbuf == NULL) Py_RETURN_TRUE;
    if (self->busy) Py_RETURN_FALSE; /* not from inside a batch: its flush sends */
    size_t chunk = self->pcap < BACKLOG_CHUNK ? self->pcap : BACKLOG_CHUNK;
    while (self->bcount > 0) {
        size_t m = self->bcount < chunk ? self->bcount : chunk;
        for (size_t j = 0; j < m; j++)
            fill_msg(&self->smsgs[j], &self->siov[2 * j],
                     &self->backlog[(self->bhead + j) % MAX_BACKLOG]);
        int r = failed_send(self) ? -1
                                  : sendmmsg(self->fd, self->smsgs, (unsigned int)m, MSG_DONTWAIT);
        self->c.send_calls++;
        size_t done;
        if (r > 0) {
            self->c.sent += (unsigned long long)r;
            done = (size_t)r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            Py_RETURN_FALSE;
        } else {
            self->c.send_errors++;
            done = 1;
        }
        for (size_t j = 0; j < done; j++) {
            out_release(&self->backlog[self->bhead]);
            self->bhead = (self->bhead + 1) % MAX_BACKLOG;
            self->bcount--;
        }
    }
    Py_RETURN_TRUE;
}

/* ------------------------------------------------------------------------- tables */

/* install(form, body, until, token[, stored, stamp, ttls]): answer `form` with ID + body
 * while now < until; with `ttls`, flattened (offset in body, TTL at age 0) pairs, the body's
 * TTLs are written for the age `stamp` and rewritten for each hit's age since `stored`. */
static PyObject *Engine_install(Engine *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 && nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "install(form, body, until, token[, stored, stamp, ttls])");
        return NULL;
    }
    if (!PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "form and body must be bytes");
        return NULL;
    }
    fd_install in = {0};
    in.until = PyFloat_AsDouble(args[2]);
    if (in.until == -1.0 && PyErr_Occurred()) return NULL;
    Py_ssize_t flen = PyBytes_GET_SIZE(args[0]), blen = PyBytes_GET_SIZE(args[1]);
    if (flen < 1 || flen > MAX_DATAGRAM - 2 || blen > MAX_DATAGRAM - 2) {
        PyErr_SetString(PyExc_ValueError, "form must be 1..65533 bytes, body at most 65533");
        return NULL;
    }
    in.body = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    in.blen = (size_t)blen;
    uint32_t *ttls = NULL;
    if (nargs == 7) {
        in.stored = PyFloat_AsDouble(args[4]);
        if (in.stored == -1.0 && PyErr_Occurred()) return NULL;
        in.stamp = PyLong_AsLongLong(args[5]);
        if (in.stamp == -1 && PyErr_Occurred()) return NULL;
        if (!PyTuple_Check(args[6])) {
            PyErr_SetString(PyExc_TypeError, "ttls must be a tuple");
            return NULL;
        }
        Py_ssize_t n = PyTuple_GET_SIZE(args[6]);
        /* each pair is a 4-byte field inside the body: at most blen / 4 of them */
        if (in.stamp < 0 || n % 2 || n / 2 > blen / 4) {
            PyErr_SetString(PyExc_ValueError, "stamp must be >= 0, ttls pairs of 4-byte fields");
            return NULL;
        }
        ttls = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(uint32_t));
        if (ttls == NULL) return PyErr_NoMemory();
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned long long v = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(args[6], i));
            if (v == (unsigned long long)-1 && PyErr_Occurred()) {
                PyMem_Free(ttls);
                return NULL;
            }
            /* an offset leaves 4 bytes in the body; a TTL is 32 bits (RFC 1035 §3.2.1) */
            if (i % 2 == 0 ? v + 4 > (unsigned long long)blen : v > 0xFFFFFFFFULL) {
                PyMem_Free(ttls);
                PyErr_SetString(PyExc_ValueError, "a TTL field outside the body, or too large");
                return NULL;
            }
            ttls[i] = (uint32_t)v;
        }
        in.ttls = ttls;
        in.nttls = (size_t)n / 2;
    }
    int r = self->closed ? 0 : fd_forms_put(&self->forms, args[0], &in, args[3]);
    PyMem_Free(ttls);
    if (r < 0) return NULL;
    return PyBool_FromLong(r);
}

static PyObject *Engine_drop(Engine *self, PyObject *form) {
    if (!PyBytes_Check(form)) {
        PyErr_SetString(PyExc_TypeError, "form must be bytes");
        return NULL;
    }
    fd_forms_del(&self->forms, (const unsigned char *)PyBytes_AS_STRING(form),
                 (size_t)PyBytes_GET_SIZE(form));
    Py_RETURN_NONE;
}

static PyObject *Engine_clear(Engine *self, PyObject *Py_UNUSED(ignored)) {
    fd_forms_clear(&self->forms);
    Py_RETURN_NONE;
}

static PyObject *Engine_allow(Engine *self, PyObject *host) {
    if (!PyUnicode_Check(host)) {
        PyErr_SetString(PyExc_TypeError, "host must be str");
        return NULL;
    }
    const char *s = PyUnicode_AsUTF8(host);
    if (s == NULL) return NULL;
    uint8_t family, key[16];
    if (self->closed || !fd_host_key(s, &family, key)) Py_RETURN_FALSE;
    fd_sources_add(&self->sources, family, key);
    Py_RETURN_TRUE;
}

static PyObject *Engine_forget(Engine *self, PyObject *Py_UNUSED(ignored)) {
    fd_sources_clear(&self->sources);
    Py_RETURN_NONE;
}

static PyObject *Engine_fold(Engine *self, PyObject *Py_UNUSED(ignored)) {
    if (self->closed) return PyList_New(0);
    return fd_forms_fold(&self->forms);
}

static PyObject *Engine_counters(Engine *self, PyObject *Py_UNUSED(ignored)) {
    const fd_counters *c = &self->c;
    if (self->relay != NULL) {
        const fd_relay_counters *rc = &self->relay->c;
        return Py_BuildValue(
            "{sKsKsKsKsKsKsKsKsnsnsnsKsKsKsKsKsKsKsKsKsKsKsKsKsKsnsnsn}", "datagrams", c->datagrams,
            "recv_calls", c->recv_calls, "answered", c->answered, "upcalls", c->upcalls,
            "send_calls", c->send_calls, "sent", c->sent, "send_errors", c->send_errors,
            "backlog_drops", c->backlog_drops, "forms", (Py_ssize_t)self->forms.count,
            "sources", (Py_ssize_t)self->sources.count, "backlog", (Py_ssize_t)self->bcount,
            "relayed", rc->relayed, "relay_answered", rc->answered, "relay_failed", rc->failed,
            "relay_timeouts", rc->timeouts, "relay_unmatched", rc->unmatched,
            "relay_mismatched", rc->mismatched, "relay_opened", rc->opened,
            "relay_send_errors", rc->send_errors, "relay_full", rc->full, "relay_followed",
            rc->followed, "relay_rendered", rc->rendered,
            "relay_declined_unsupported_type", rc->declined[FD_RELAY_UNSUPPORTED],
            "relay_declined_dnssec", rc->declined[FD_RELAY_DNSSEC], "relay_declined_disabled",
            rc->declined[FD_RELAY_DISABLED], "relay_inflight",
            (Py_ssize_t)self->relay->inflight, "relay_sockets", (Py_ssize_t)self->relay->open,
            "relay_keys", (Py_ssize_t)self->relay->keys.count);
    }
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsnsnsn}", "datagrams", c->datagrams, "recv_calls", c->recv_calls,
        "answered", c->answered, "upcalls", c->upcalls, "send_calls", c->send_calls, "sent",
        c->sent, "send_errors", c->send_errors, "backlog_drops", c->backlog_drops, "forms",
        (Py_ssize_t)self->forms.count, "sources", (Py_ssize_t)self->sources.count, "backlog",
        (Py_ssize_t)self->bcount);
}

static PyObject *Engine_fail_sends(Engine *self, PyObject *args) {
    int err;
    unsigned int count;
    if (!PyArg_ParseTuple(args, "iI", &err, &count)) return NULL;
    self->fail_errno = err;
    self->fail_count = count;
    Py_RETURN_NONE;
}

static PyObject *Engine_close(Engine *self, PyObject *Py_UNUSED(ignored)) {
    if (self->busy)
        self->closing = 1; /* released when the batch ends */
    else if (!self->closed)
        release(self);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------- the type */

static int Engine_init(Engine *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd",      "batch", "upcall",       "want_write",
                             "capacity", "relayed", "arm", "max_inflight", NULL};
    int fd, batch;
    Py_ssize_t capacity = DEFAULT_FORMS, max_inflight = 1000;
    PyObject *up, *ww, *relayed = Py_None, *arm = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiOO|n$OOn", kwlist, &fd, &batch, &up, &ww,
                                     &capacity, &relayed, &arm, &max_inflight))
        return -1;
    if (relayed != Py_None && (!PyCallable_Check(relayed) || !PyCallable_Check(arm))) {
        PyErr_SetString(PyExc_TypeError, "relayed and arm must be callable");
        return -1;
    }
    if (max_inflight < 1 || max_inflight > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "max_inflight must be 1..1048576");
        return -1;
    }
    if (self->rbuf != NULL || self->closed) {
        PyErr_SetString(PyExc_RuntimeError, "an Engine is initialised once");
        return -1;
    }
    if (batch < 1 || batch > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "batch must be 1..%d", MAX_BATCH);
        return -1;
    }
    if (capacity < 1 || capacity > (1 << 22)) {
        PyErr_SetString(PyExc_ValueError, "capacity must be 1..4194304");
        return -1;
    }
    if (!PyCallable_Check(up) || !PyCallable_Check(ww)) {
        PyErr_SetString(PyExc_TypeError, "upcall and want_write must be callable");
        return -1;
    }
    int family = 0;
    socklen_t flen = sizeof(family);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &flen) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (family != AF_INET && family != AF_INET6) {
        PyErr_SetString(PyExc_ValueError, "the socket must be AF_INET or AF_INET6");
        return -1;
    }
    uint64_t seed;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed))
        seed = (uint64_t)(uintptr_t)self ^ (uint64_t)(now() * 1e9);
    self->fd = fd;
    self->family = family;
    self->batch = batch;
    self->pcap = 2 * (size_t)batch;
    self->upcall = Py_NewRef(up);
    self->want_write = Py_NewRef(ww);
    /* Receive slots of 64 KiB each, mapped lazily: only the pages a datagram reaches are
     * ever resident (a typical query touches one page per slot). */
    self->rbuf_len = (size_t)batch * SLOT_STRIDE;
    void *m = mmap(NULL, self->rbuf_len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    self->rbuf = m == MAP_FAILED ? NULL : m;
    self->rmsgs = PyMem_Calloc((size_t)batch, sizeof(struct mmsghdr));
    self->riov = PyMem_Calloc((size_t)batch, sizeof(struct iovec));
    self->raddr = PyMem_Calloc((size_t)batch, sizeof(struct sockaddr_storage));
    self->pending = PyMem_Calloc(self->pcap, sizeof(fd_out));
    self->smsgs = PyMem_Calloc(self->pcap, sizeof(struct mmsghdr));
    self->siov = PyMem_Calloc(2 * self->pcap, sizeof(struct iovec));
    self->backlog = PyMem_Calloc(MAX_BACKLOG, sizeof(fd_out));
    if (self->rbuf == NULL || !self->rmsgs || !self->riov || !self->raddr || !self->pending ||
        !self->smsgs || !self->siov || !self->backlog) {
        release(self);
        PyErr_NoMemory();
        return -1;
    }
    /* the dirty list: every form with hits between two folds, live or dropped since */
    if (fd_forms_init(&self->forms, (size_t)capacity, 4 * (size_t)capacity + self->pcap,
                      seed) < 0 ||
        fd_sources_init(&self->sources, seed * 0x9E3779B97F4A7C15ULL) < 0) {
        release(self);
        return -1;
    }
    if (relayed != Py_None) {
        self->relay = PyMem_Malloc(sizeof(fd_relay));
        self->items = PyList_New(0);
        if (self->relay == NULL || self->items == NULL) {
            PyMem_Free(self->relay);
            self->relay = NULL;
            release(self);
            if (!PyErr_Occurred()) PyErr_NoMemory();
            return -1;
        }
        if (fd_relay_init(self->relay, (uint32_t)max_inflight, seed ^ 0x2545F4914F6CDD1DULL) <
            0) {
            PyMem_Free(self->relay);
            self->relay = NULL;
            release(self);
            return -1;
        }
        self->relayed = Py_NewRef(relayed);
        self->arm = Py_NewRef(arm);
    }
    for (int i = 0; i < batch; i++) {
        self->riov[i].iov_base = self->rbuf + (size_t)i * SLOT_STRIDE;
        self->riov[i].iov_len = MAX_DATAGRAM;
        self->rmsgs[i].msg_hdr.msg_iov = &self->riov[i];
        self->rmsgs[i].msg_hdr.msg_iovlen = 1;
        self->rmsgs[i].msg_hdr.msg_name = &self->raddr[i];
    }
    return 0;
}

static int Engine_traverse(Engine *self, visitproc visit, void *arg) {
    /* Tokens and bodies (Front objects, bytes) never refer back to the engine. */
    Py_VISIT(self->upcall);
    Py_VISIT(self->want_write);
    Py_VISIT(self->last_addr);
    Py_VISIT(self->relayed);
    Py_VISIT(self->arm);
    Py_VISIT(self->items);
    if (self->relay != NULL) Py_VISIT(self->relay->stored);
    return 0;
}

static int Engine_clear_refs(Engine *self) {
    Py_CLEAR(self->upcall);
    Py_CLEAR(self->want_write);
    Py_CLEAR(self->last_addr);
    Py_CLEAR(self->relayed);
    Py_CLEAR(self->arm);
    Py_CLEAR(self->items);
    return 0;
}

static void Engine_dealloc(Engine *self) {
    PyObject_GC_UnTrack(self);
    if (!self->closed) release(self);
    Py_CLEAR(self->err_type);
    Py_CLEAR(self->err_value);
    Py_CLEAR(self->err_tb);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Engine_get_closed(Engine *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(self->closed || self->closing);
}

static PyObject *Engine_get_upstream_fd(Engine *self, void *Py_UNUSED(closure)) {
    return PyLong_FromLong(self->relay != NULL ? self->relay->epfd : -1);
}

static PyObject *Engine_get_inflight(Engine *self, void *Py_UNUSED(closure)) {
    return PyLong_FromUnsignedLong(self->relay != NULL ? self->relay->inflight : 0);
}

static PyMethodDef Engine_methods[] = {
    {"on_readable", (PyCFunction)Engine_on_readable, METH_NOARGS,
     "Read up to batch datagrams: answer the ready ones, hand the rest to upcall."},
    {"on_writable", (PyCFunction)Engine_on_writable, METH_NOARGS,
     "Send the backlog; True when it is empty."},
    {"sendto", (PyCFunction)(void (*)(void))Engine_sendto, METH_FASTCALL,
     "Send a reply (joins the batch inside on_readable; else at once or into the backlog)."},
    {"install", (PyCFunction)(void (*)(void))Engine_install, METH_FASTCALL,
     "install(form, body, until, token[, stored, stamp, ttls]) -> bool: answer form with ID + "
     "body, its TTLs counted down from stored, while now < until."},
    {"drop", (PyCFunction)Engine_drop, METH_O, "Forget one form."},
    {"clear", (PyCFunction)Engine_clear, METH_NOARGS, "Forget every form."},
    {"allow", (PyCFunction)Engine_allow, METH_O, "A source address that passes the gate."},
    {"forget", (PyCFunction)Engine_forget, METH_NOARGS, "Forget every passing source."},
    {"fold", (PyCFunction)Engine_fold, METH_NOARGS,
     "[(token, hits, seconds)] answered here since the last fold, zeroed."},
    {"counters", (PyCFunction)Engine_counters, METH_NOARGS, "Counters since the start."},
    {"close", (PyCFunction)Engine_close, METH_NOARGS, "Release everything (idempotent)."},
    {"on_upstream", (PyCFunction)Engine_on_upstream, METH_NOARGS,
     "Read the relay's upstream sockets; their outcomes go to relayed(items, stored)."},
    {"expire", (PyCFunction)Engine_expire, METH_NOARGS,
     "Time out the relayed queries due; when the next one is due, or None."},
    {"relay_policy", (PyCFunction)(void (*)(void))Engine_relay_policy, METH_FASTCALL,
     "relay_policy(server, timeout, deadline, mark, endings, suffix, ipv6_local, native, "
     "nss): what the relay may take (server None or endings None: nothing)."},
    {"relay_cache", (PyCFunction)Engine_relay_cache, METH_O,
     "relay_cache((min_ttl, max_ttl, denial_max_ttl, servfail_ttl) | None): classify each "
     "answer for the cache with these limits (admission.c), or not."},
    {"relay_render", (PyCFunction)(void (*)(void))Engine_relay_render, METH_FASTCALL,
     "relay_render((capacity, denial_capacity, opt_size) | None, lima_compat, edns_max_udp): "
     "build and send the client's reply to each final answer here (render.c), or not."},
    {"relay_tallies", (PyCFunction)Engine_relay_tallies, METH_NOARGS,
     "The accounting of the answers sent here since the last call (tally.h), zeroed: "
     "([(qtype, do, rcode, req_slot, req_bytes, resp_slot, resp_bytes, n, slots, seconds)], "
     "[(rcode, n, upstream slots, upstream seconds)])."},
    {"key_add", (PyCFunction)Engine_key_add, METH_O, "A key the cache now holds."},
    {"key_discard", (PyCFunction)Engine_key_discard, METH_O, "A key the cache let go."},
    {"key_clear", (PyCFunction)Engine_key_clear, METH_NOARGS, "The cache was emptied."},
    {"_fail_sends", (PyCFunction)Engine_fail_sends, METH_VARARGS,
     "_fail_sends(errno, count): the next count sends fail with errno (tests: a full socket "
     "buffer cannot be made on loopback)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Engine_getset[] = {
    {"closed", (getter)Engine_get_closed, NULL, "Whether close() was called.", NULL},
    {"upstream_fd", (getter)Engine_get_upstream_fd, NULL,
     "The relay's epoll descriptor (readable: call on_upstream); -1 without a relay.", NULL},
    {"inflight", (getter)Engine_get_inflight, NULL, "Queries the relay waits on.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "fastdns.serve._cengine.Engine",
    .tp_doc = "A worker's UDP socket read and written in C (docs/datapath.md).",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_traverse = (traverseproc)Engine_traverse,
    .tp_clear = (inquiry)Engine_clear_refs,
    .tp_methods = Engine_methods,
    .tp_getset = Engine_getset,
};

int fd_engine_register(PyObject *module) {
    if (PyType_Ready(&EngineType) < 0) return -1;
    if (PyModule_AddObjectRef(module, "Engine", (PyObject *)&EngineType) < 0) return -1;
    if (PyModule_AddIntConstant(module, "MAX_BATCH", MAX_BATCH) < 0) return -1;
    if (PyModule_AddIntConstant(module, "MAX_BACKLOG", MAX_BACKLOG) < 0) return -1;
    PyObject *sizes = fd_size_bounds();
    int added = sizes != NULL ? PyModule_AddObjectRef(module, "SIZE_BUCKETS", sizes) : -1;
    Py_XDECREF(sizes);
    if (added < 0) return -1;
    return 0;
}
