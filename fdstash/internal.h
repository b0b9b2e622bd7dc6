/* internal.h - what the files of fdstash/ share and nobody else sees. */
#ifndef NVTPM_FDSTASH_INTERNAL_H
#define NVTPM_FDSTASH_INTERNAL_H

#include "fdstash.h"

/* fdstash_give without the rule that names must not start with a digit. */
int fdstash_store(struct fdstash *stash, const char *name, int fd, struct nv_error *err);

#endif
