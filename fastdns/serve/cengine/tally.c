/* The accounting of the answers the relay sends itself (tally.h). */
#include "tally.h"

#include <string.h>

/* fastdns.metrics.stats.SIZE_BUCKETS (CoreDNS vars.go); the module's SIZE_BUCKETS constant
 * lets tests/unit/test_crelay_engine.py hold them equal. */
static const double size_bounds[FD_SIZE_BUCKETS - 1] = {
    0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3};

int fd_time_slot(double secs) {
    double bound = 0.00025;
    for (int i = 0; i < FD_TIME_BUCKETS - 1; i++, bound *= 2)
        if (secs <= bound) return i;
    return FD_TIME_BUCKETS - 1;
}

int fd_size_slot(size_t n) {
    for (int i = 0; i < FD_SIZE_BUCKETS - 1; i++)
        if ((double)n <= size_bounds[i]) return i;
    return FD_SIZE_BUCKETS - 1;
}

int fd_tally_answer(fd_tallies *t, uint16_t qtype, int do_bit, int rcode, size_t req_len,
                    size_t resp_len, double secs, double upstream_secs) {
    uint8_t rq = (uint8_t)fd_size_slot(req_len), rs = (uint8_t)fd_size_slot(resp_len);
    rcode &= 0xF;
    fd_tally *e = NULL;
    for (size_t i = 0; i < t->count; i++) { /* a few keys in practice: a linear scan */
        fd_tally *c = &t->t[i];
        if (c->qtype == qtype && c->do_bit == !!do_bit && c->rcode == rcode &&
            c->req_slot == rq && c->resp_slot == rs) {
            e = c;
            break;
        }
    }
    if (e == NULL) {
        if (t->count == FD_TALLIES) return 0;
        e = &t->t[t->count++];
        memset(e, 0, sizeof(*e));
        e->qtype = qtype;
        e->do_bit = (uint8_t)!!do_bit;
        e->rcode = (uint8_t)rcode;
        e->req_slot = rq;
        e->resp_slot = rs;
    }
    e->n++;
    e->req_bytes += req_len;
    e->resp_bytes += resp_len;
    e->dur[fd_time_slot(secs)]++;
    e->dur_total += secs;
    t->proxy_n[rcode]++;
    t->proxy_dur[rcode][fd_time_slot(upstream_secs)]++;
    t->proxy_total[rcode] += upstream_secs;
    return 1;
}

static PyObject *slots(const uint64_t *b) {
    PyObject *out = PyTuple_New(FD_TIME_BUCKETS);
    if (out == NULL) return NULL;
    for (int i = 0; i < FD_TIME_BUCKETS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(b[i]);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, v);
    }
    return out;
}

static int append(PyObject *list, PyObject *item) {
    if (item == NULL) return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

PyObject *fd_tallies_fold(fd_tallies *t) {
    PyObject *requests = PyList_New(0), *proxies = PyList_New(0);
    if (requests == NULL || proxies == NULL) goto fail;
    for (size_t i = 0; i < t->count; i++) {
        const fd_tally *e = &t->t[i];
        PyObject *d = slots(e->dur);
        if (d == NULL) goto fail;
        if (append(requests, Py_BuildValue("(HNiiKiKKNd)", e->qtype, PyBool_FromLong(e->do_bit),
                                           e->rcode, e->req_slot, e->req_bytes, e->resp_slot,
                                           e->resp_bytes, e->n, d, e->dur_total)) < 0)
            goto fail;
    }
    for (int rc = 0; rc < 16; rc++) {
        if (t->proxy_n[rc] == 0) continue;
        PyObject *d = slots(t->proxy_dur[rc]);
        if (d == NULL) goto fail;
        if (append(proxies, Py_BuildValue("(iKNd)", rc, t->proxy_n[rc], d, t->proxy_total[rc])) <
            0)
            goto fail;
    }
    PyObject *out = PyTuple_Pack(2, requests, proxies);
    Py_DECREF(requests);
    Py_DECREF(proxies);
    if (out != NULL) memset(t, 0, sizeof(*t));
    return out;
fail:
    Py_XDECREF(requests);
    Py_XDECREF(proxies);
    return NULL;
}

PyObject *fd_size_bounds(void) {
    PyObject *out = PyTuple_New(FD_SIZE_BUCKETS - 1);
    if (out == NULL) return NULL;
    for (int i = 0; i < FD_SIZE_BUCKETS - 1; i++) {
        PyObject *v = PyFloat_FromDouble(size_bounds[i]);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, v);
    }
    return out;
}
