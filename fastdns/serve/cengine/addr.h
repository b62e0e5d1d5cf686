/* Socket addresses between C and Python: the tuples socket.recvfrom gives and sendto takes. */
#ifndef FASTDNS_CENGINE_ADDR_H
#define FASTDNS_CENGINE_ADDR_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <sys/socket.h>

/* (host, port) for AF_INET, (host, port, flowinfo, scope_id) for AF_INET6, hosts formatted
 * as CPython's socket module does; NULL with an error set. */
PyObject *fd_addr_tuple(const struct sockaddr_storage *sa, socklen_t len);
/* The sendto address tuple for a socket of `family`; -1 with an error set. */
int fd_addr_parse(PyObject *addr, int family, struct sockaddr_storage *out, socklen_t *len);
/* The passing-set key of a packet's source: 1 with family 4/6 and 16 address bytes (IPv4
 * in the first 4, the rest zero); 0 when the source is never answered in C (a scoped IPv6
 * address, whose host string carries the interface). */
int fd_addr_key(const struct sockaddr_storage *sa, uint8_t *family, uint8_t addr[16]);
/* The key of a host string as Gate.verdicts holds it; 0 when it is not a plain address. */
int fd_host_key(const char *host, uint8_t *family, uint8_t addr[16]);

#endif
