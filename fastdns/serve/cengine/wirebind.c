/* wirebind.c: the Python functions over wire.c (wirebind.h). */
#include "wirebind.h"

#include "wire.h"

/* A bytes-like argument as a read-only span; the caller releases view. */
static int get_span(PyObject *obj, Py_buffer *view) {
    return PyObject_GetBuffer(obj, view, PyBUF_SIMPLE);
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
    Py_buffer view;
    if (get_span(arg, &view) < 0) return NULL;
    struct fd_query q;
    int rc = fd_parse_query((const uint8_t *)view.buf, (size_t)view.len, &q);
    PyObject *result;
    if (rc == FD_QUERY_OK) {
        result = query_tuple((const uint8_t *)view.buf, &q);
    } else if (rc == FD_QUERY_DROP) {
        result = Py_BuildValue("(s)", "drop");
    } else {
        result = Py_BuildValue("(si)", "rcode", rc);
    }
    PyBuffer_Release(&view);
    return result;
}

PyObject *fd_py_question_matches(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "question_matches(reply, query) takes 2 arguments");
        return NULL;
    }
    Py_buffer reply, query;
    if (get_span(args[0], &reply) < 0) return NULL;
    if (get_span(args[1], &query) < 0) {
        PyBuffer_Release(&reply);
        return NULL;
    }
    struct fd_query q;
    PyObject *result = NULL;
    if (fd_parse_query((const uint8_t *)query.buf, (size_t)query.len, &q) != FD_QUERY_OK) {
        PyErr_SetString(PyExc_ValueError, "the query does not parse");
    } else {
        result = PyBool_FromLong(fd_question_matches((const uint8_t *)reply.buf,
                                                     (size_t)reply.len,
                                                     (const uint8_t *)query.buf, &q));
    }
    PyBuffer_Release(&query);
    PyBuffer_Release(&reply);
    return result;
}

PyObject *fd_py_reply_header(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (get_span(arg, &view) < 0) return NULL;
    const uint8_t *buf = (const uint8_t *)view.buf;
    size_t n = (size_t)view.len;
    int id = fd_reply_id(buf, n);
    PyObject *result;
    if (id < 0) {
        result = Py_NewRef(Py_None);
    } else {
        result = Py_BuildValue("(iiN)", id, fd_reply_rcode(buf, n),
                               PyBool_FromLong(fd_truncated(buf, n)));
    }
    PyBuffer_Release(&view);
    return result;
}
