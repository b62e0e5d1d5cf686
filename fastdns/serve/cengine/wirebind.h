/* wirebind.h: the Python functions over wire.c (for the tests, the fuzz and diagnostics;
 * the datapath itself calls wire.h directly). Their method-table entries are
 * FD_WIRE_METHODS, spliced into module.c's table. */
#ifndef FASTDNS_CENGINE_WIREBIND_H
#define FASTDNS_CENGINE_WIREBIND_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

PyObject *fd_py_parse_query(PyObject *self, PyObject *arg);
PyObject *fd_py_question_matches(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *fd_py_reply_header(PyObject *self, PyObject *arg);
PyObject *fd_py_classify(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *fd_py_render(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#include "admission.h"
/* admission.py's Verdict tuple from a verdict; NULL with an error set */
PyObject *fd_verdict_tuple(const fd_verdict *v);
/* (min_ttl, max_ttl, denial_max_ttl, servfail_ttl) into cfg; -1 with an error set */
int fd_cache_cfg_from(PyObject *obj, fd_cache_cfg *cfg);
#include "render.h"
/* (capacity, denial_capacity, opt_size) into cfg; -1 with an error set */
int fd_render_cfg_from(PyObject *obj, fd_render_cfg *cfg);

#define FD_WIRE_METHODS                                                                    \
    {"parse_query", (PyCFunction)fd_py_parse_query, METH_O,                                \
     "parse_query(data) -> ('drop',) | ('rcode', n) | (id, flags, qname, qtype, qclass, "  \
     "qend, has_opt, udp_size, do, edns_version, key): fastdns.dns.wire.parse_query in C"}, \
        {"question_matches", (PyCFunction)(void (*)(void))fd_py_question_matches,          \
         METH_FASTCALL,                                                                    \
         "question_matches(reply, query) -> bool: wire.question_matches for the query "    \
         "bytes (ValueError when they do not parse)"},                                     \
        {"reply_header", (PyCFunction)fd_py_reply_header, METH_O,                          \
         "reply_header(reply) -> (id, rcode, truncated) | None when shorter than 12 bytes"}, \
        {"classify", (PyCFunction)(void (*)(void))fd_py_classify, METH_FASTCALL,            \
         "classify(query, reply, (min_ttl, max_ttl, denial_max_ttl, servfail_ttl), hint) -> " \
         "admission.classify's verdict in C (ValueError when the query does not parse)"}, \
        {"render", (PyCFunction)(void (*)(void))fd_py_render, METH_FASTCALL,                \
         "render(query, reply, limits, (capacity, denial_capacity, opt_size)) -> the reply " \
         "the client gets once the cache stored it (render.c), or None when C leaves it"},

#endif
