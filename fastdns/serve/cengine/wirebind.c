/* wirebind.c: the Python functions over wire.c (wirebind.h). */
#include "wirebind.h"

#include <stdlib.h>
#include <string.h>

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
