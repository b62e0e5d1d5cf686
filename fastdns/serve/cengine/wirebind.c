/* wirebind.c: the Python functions over wire.c (wirebind.h). */
#include "wirebind.h"

#include <stdlib.h>
#include <string.h>

#include "admission.h"
#include "render.h"
#include "wire.h"

/* A bytes-like argument, read-only. Built by scripts/sanitize (FD_SANITIZE), the bytes are a
 * copy in a heap block of exactly their length: a bytes object carries a trailing NUL that
 * would hide a one-byte over-read from AddressSanitizer. */
struct span {
    Py_buffer view;
    const uint8_t *bytes;
    size_t n;
    void *copy;
};

static int get_span(PyObject *obj, struct span *s) {
    if (PyObject_GetBuffer(obj, &s->view, PyBUF_SIMPLE) < 0) return -1;
    s->bytes = (const uint8_t *)s->view.buf;
    s->n = (size_t)s->view.len;
    s->copy = NULL;
#ifdef FD_SANITIZE
    s->copy = malloc(s->n ? s->n : 1);
    if (s->copy == NULL) {
        PyBuffer_Release(&s->view);
        PyErr_NoMemory();
        return -1;
    }
    if (s->n) memcpy(s->copy, s->bytes, s->n);
    s->bytes = (const uint8_t *)s->copy;
#endif
    return 0;
}

static void release_span(struct span *s) {
    free(s->copy);
    PyBuffer_Release(&s->view);
}

static PyObject *query_tuple(const uint8_t *buf, const struct fd_query *q) {
    /* the order of the fields: fastdns/serve/_cengine.pyi (QueryFields) */
    return Py_BuildValue("(iiy#iiiNiNiy#)", q->id, q->flags,
                         (const char *)buf + q->qname_off, (Py_ssize_t)q->qname_len, q->qtype,
                         q->qclass, q->qend, PyBool_FromLong(q->has_opt), q->udp_size,
                         PyBool_FromLong(q->do_bit), q->edns_version, (const char *)q->key,
                         (Py_ssize_t)q->key_len);
}

PyObject *fd_py_parse_query(PyObject *self, PyObject *arg) {
    (void)self;
    struct span data;
    if (get_span(arg, &data) < 0) return NULL;
    struct fd_query q;
    int rc = fd_parse_query(data.bytes, data.n, &q);
    PyObject *result;
    if (rc == FD_QUERY_OK) {
        result = query_tuple(data.bytes, &q);
    } else if (rc == FD_QUERY_DROP) {
        result = Py_BuildValue("(s)", "drop");
    } else {
        result = Py_BuildValue("(si)", "rcode", rc);
    }
    release_span(&data);
    return result;
}

PyObject *fd_py_question_matches(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "question_matches(reply, query) takes 2 arguments");
        return NULL;
    }
    struct span reply, query;
    if (get_span(args[0], &reply) < 0) return NULL;
    if (get_span(args[1], &query) < 0) {
        release_span(&reply);
        return NULL;
    }
    struct fd_query q;
    PyObject *result = NULL;
    if (fd_parse_query(query.bytes, query.n, &q) != FD_QUERY_OK) {
        PyErr_SetString(PyExc_ValueError, "the query does not parse");
    } else {
        result = PyBool_FromLong(fd_question_matches(reply.bytes, reply.n, query.bytes, &q));
    }
    release_span(&query);
    release_span(&reply);
    return result;
}

PyObject *fd_py_reply_header(PyObject *self, PyObject *arg) {
    (void)self;
    struct span reply;
    if (get_span(arg, &reply) < 0) return NULL;
    int id = fd_reply_id(reply.bytes, reply.n);
    PyObject *result;
    if (id < 0) {
        result = Py_NewRef(Py_None);
    } else {
        result = Py_BuildValue("(iiN)", id, fd_reply_rcode(reply.bytes, reply.n),
                               PyBool_FromLong(fd_truncated(reply.bytes, reply.n)));
    }
    release_span(&reply);
    return result;
}

/* A Python verdict tuple (admission.py Verdict) from v: (kind, life, opt_start, ttls, as_is). */
PyObject *fd_verdict_tuple(const fd_verdict *v) {
    PyObject *ttls = PyTuple_New((Py_ssize_t)(2 * v->npairs));
    if (ttls == NULL) return NULL;
    for (size_t k = 0; k < 2 * v->npairs; k++) {
        PyObject *x = PyLong_FromUnsignedLong(v->ttls[k]);
        if (x == NULL) {
            Py_DECREF(ttls);
            return NULL;
        }
        PyTuple_SET_ITEM(ttls, (Py_ssize_t)k, x);
    }
    return Py_BuildValue("(iLnNO)", v->kind, (long long)v->life, (Py_ssize_t)v->opt_start, ttls,
                         v->as_is ? Py_True : Py_False);
}

int fd_cache_cfg_from(PyObject *obj, fd_cache_cfg *cfg) {
    long long a, b, c, d;
    if (!PyArg_ParseTuple(obj, "LLLL", &a, &b, &c, &d)) return -1;
    cfg->min_ttl = a;
    cfg->max_ttl = b;
    cfg->denial_max_ttl = c;
    cfg->servfail_ttl = d;
    return 0;
}

static uint32_t verdict_room[2 * FD_MAX_RECORDS];

PyObject *fd_py_classify(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "classify(query, reply, cfg, hint) takes 4 arguments");
        return NULL;
    }
    fd_cache_cfg cfg;
    if (fd_cache_cfg_from(args[2], &cfg) < 0) return NULL;
    long long hint = -1;
    if (args[3] != Py_None) {
        hint = PyLong_AsLongLong(args[3]);
        if (hint == -1 && PyErr_Occurred()) return NULL;
        if (hint < 0) {
            PyErr_SetString(PyExc_ValueError, "hint must be >= 0 or None");
            return NULL;
        }
    }
    struct span reply, query;
    if (get_span(args[1], &reply) < 0) return NULL;
    if (get_span(args[0], &query) < 0) {
        release_span(&reply);
        return NULL;
    }
    struct fd_query q;
    PyObject *result = NULL;
    if (fd_parse_query(query.bytes, query.n, &q) != FD_QUERY_OK) {
        PyErr_SetString(PyExc_ValueError, "the query does not parse");
    } else {
        fd_verdict v = {.ttls = verdict_room};
        if (fd_classify(reply.bytes, reply.n, query.bytes, &q, &cfg, hint, &v))
            result = fd_verdict_tuple(&v);
        else
            result = Py_NewRef(Py_None);
    }
    release_span(&query);
    release_span(&reply);
    return result;
}

int fd_render_cfg_from(PyObject *obj, fd_render_cfg *cfg) {
    long long capacity, denial_capacity;
    int opt_size;
    if (!PyArg_ParseTuple(obj, "LLi", &capacity, &denial_capacity, &opt_size)) return -1;
    if (opt_size < 0 || opt_size > 65535) {
        PyErr_SetString(PyExc_ValueError, "opt_size must be 0..65535");
        return -1;
    }
    cfg->capacity = capacity;
    cfg->denial_capacity = denial_capacity;
    cfg->opt_size = (uint16_t)opt_size;
    return 0;
}

static uint8_t render_room[65536];

PyObject *fd_py_render(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "render(query, reply, limits, store) takes 4 arguments");
        return NULL;
    }
    fd_cache_cfg cfg;
    fd_render_cfg rcfg;
    if (fd_cache_cfg_from(args[2], &cfg) < 0 || fd_render_cfg_from(args[3], &rcfg) < 0)
        return NULL;
    struct span reply, query;
    if (get_span(args[1], &reply) < 0) return NULL;
    if (get_span(args[0], &query) < 0) {
        release_span(&reply);
        return NULL;
    }
    struct fd_query q;
    PyObject *result = NULL;
    if (fd_parse_query(query.bytes, query.n, &q) != FD_QUERY_OK) {
        PyErr_SetString(PyExc_ValueError, "the query does not parse");
    } else if (!fd_question_matches(reply.bytes, reply.n, query.bytes, &q)) {
        PyErr_SetString(PyExc_ValueError, "the reply is not to this query");
    } else {
        fd_verdict v = {.ttls = verdict_room};
        int ok = fd_classify(reply.bytes, reply.n, query.bytes, &q, &cfg, -1, &v);
        size_t len = fd_render(reply.bytes, reply.n, query.bytes, &q, ok ? &v : NULL, &rcfg,
                               render_room, sizeof(render_room));
        result = len ? PyBytes_FromStringAndSize((const char *)render_room, (Py_ssize_t)len)
                     : Py_NewRef(Py_None);
    }
    release_span(&query);
    release_span(&reply);
    return result;
}
