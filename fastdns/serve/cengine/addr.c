/* Socket addresses (addr.h). */
#include "addr.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

PyObject *fd_addr_tuple(const struct sockaddr_storage *sa, socklen_t len) {
    char host[NI_MAXHOST];
    if (sa->ss_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", host, (int)ntohs(a->sin_port));
    }
    if (sa->ss_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        if (a->sin6_scope_id == 0) {
            if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)) == NULL)
                return PyErr_SetFromErrno(PyExc_OSError);
        } else if (getnameinfo((const struct sockaddr *)a, sizeof(*a), host, sizeof(host), NULL,
                               0, NI_NUMERICHOST) != 0) {
            /* CPython formats with getnameinfo: "fe80::1%eth0" for a scoped address */
            PyErr_SetString(PyExc_OSError, "cannot format a scoped IPv6 source address");
            return NULL;
        }
        return Py_BuildValue("(siII)", host, (int)ntohs(a->sin6_port),
                             (unsigned int)ntohl(a->sin6_flowinfo),
                             (unsigned int)a->sin6_scope_id);
    }
    PyErr_Format(PyExc_OSError, "unexpected source address family %d", (int)sa->ss_family);
    return NULL;
}

static int port_of(PyObject *o, unsigned int *port) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 0 || v > 65535) {
        PyErr_SetString(PyExc_OverflowError, "port must be 0-65535.");
        return -1;
    }
    *port = (unsigned int)v;
    return 0;
}

int fd_addr_parse(PyObject *addr, int family, struct sockaddr_storage *out, socklen_t *len) {
    if (!PyTuple_Check(addr)) {
        PyErr_SetString(PyExc_TypeError, "the address must be a tuple");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(addr);
    memset(out, 0, sizeof(*out));
    if (family == AF_INET) {
        if (n != 2) {
            PyErr_SetString(PyExc_TypeError, "AF_INET address must be a pair (host, port)");
            return -1;
        }
    } else if (n < 2 || n > 4) {
        PyErr_SetString(PyExc_TypeError, "AF_INET6 address must be a tuple (host, port[, "
                                         "flowinfo[, scopeid]])");
        return -1;
    }
    const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(addr, 0));
    if (host == NULL) return -1;
    unsigned int port;
    if (port_of(PyTuple_GET_ITEM(addr, 1), &port) < 0) return -1;
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)out;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1) goto bad_host;
        *len = sizeof(*a);
        return 0;
    }
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)out;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    unsigned long flowinfo = 0, scope = 0;
    if (n > 2) {
        flowinfo = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(addr, 2));
        if (flowinfo == (unsigned long)-1 && PyErr_Occurred()) return -1;
        if (flowinfo > 0xfffff) {
            PyErr_SetString(PyExc_OverflowError, "flowinfo must be 0-1048575.");
            return -1;
        }
    }
    if (n > 3) {
        scope = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(addr, 3));
        if (scope == (unsigned long)-1 && PyErr_Occurred()) return -1;
    }
    char buf[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
    const char *pct = strchr(host, '%');
    if (pct != NULL) { /* "fe80::1%eth0" or "fe80::1%2": the scope is in the host */
        size_t hl = (size_t)(pct - host);
        if (hl >= INET6_ADDRSTRLEN) goto bad_host;
        memcpy(buf, host, hl);
        buf[hl] = '\0';
        const char *zone = pct + 1;
        unsigned int idx = if_nametoindex(zone);
        if (idx == 0) {
            char *end;
            unsigned long v = strtoul(zone, &end, 10);
            if (*zone == '\0' || *end != '\0' || v > 0xffffffffUL) goto bad_host;
            idx = (unsigned int)v;
        }
        if (scope == 0) scope = idx;
        host = buf;
    }
    if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) goto bad_host;
    a->sin6_flowinfo = htonl((uint32_t)flowinfo);
    a->sin6_scope_id = (uint32_t)scope;
    *len = sizeof(*a);
    return 0;
bad_host:
    PyErr_Format(PyExc_OSError, "not a numeric address for this socket: %s", host);
    return -1;
}

int fd_addr_key(const struct sockaddr_storage *sa, uint8_t *family, uint8_t addr[16]) {
    memset(addr, 0, 16);
    if (sa->ss_family == AF_INET) {
        *family = 4;
        memcpy(addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 1;
    }
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        if (a->sin6_scope_id != 0) return 0;
        *family = 6;
        memcpy(addr, &a->sin6_addr, 16);
        return 1;
    }
    return 0;
}

int fd_host_key(const char *host, uint8_t *family, uint8_t addr[16]) {
    memset(addr, 0, 16);
    if (inet_pton(AF_INET, host, addr) == 1) {
        *family = 4;
        return 1;
    }
    if (inet_pton(AF_INET6, host, addr) == 1) {
        *family = 6;
        return 1;
    }
    return 0;
}
