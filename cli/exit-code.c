/* exit-code.c - the exit code of a failure: by the error's status, where the
 * layer that met it set one, else by the few errnos nvram.h reserves.
 * Apart from main.c so that tests/unit/test-status.c links it. */
#include <errno.h>
#include <stddef.h>

#include "cli.h"

int cli_exit_code(const struct nv_error *err, int code)
{
    switch (nv_error_status(err)) { /* no default: -Wswitch names a status left out */
    case NV_STATUS_USAGE:
        return CLI_EXIT_USAGE;
    case NV_STATUS_CORRUPT:
        return CLI_EXIT_CORRUPT;
    case NV_STATUS_KEY_MISSING:
        return CLI_EXIT_KEY_MISSING;
    case NV_STATUS_KEY_WRONG:
        return CLI_EXIT_KEY_WRONG;
    case NV_STATUS_KEY_UNNEEDED:
        return CLI_EXIT_KEY_UNNEEDED;
    case NV_STATUS_BUSY:
        return CLI_EXIT_BUSY;
    case NV_STATUS_NOT_LOADABLE:
        return CLI_EXIT_NOT_LOADABLE;
    case NV_STATUS_IO:
        return CLI_EXIT_ERROR;
    case NV_STATUS_UNSET:
        break;
    }

    /* No status: only the errnos the layers below reserve for one meaning
     * (nvram.h's list) decide. Nothing maps to usage: an EINVAL from a
     * library or a system call is no bad command line. */
    switch (-code) {
    case ENOKEY:
        return CLI_EXIT_KEY_MISSING;
    case EKEYREJECTED:
        return CLI_EXIT_KEY_WRONG;
    case EKEYREVOKED:
        return CLI_EXIT_KEY_UNNEEDED;
    case EAGAIN:
    case ETIMEDOUT:
    case EBUSY:
        return CLI_EXIT_BUSY;
    case EUCLEAN:
    case EBADMSG:
    case ENOMEDIUM:
    case ENODATA:
    case EMSGSIZE: /* too small for an NVRAM; a full disk (ENOSPC) is an I/O error */
        return CLI_EXIT_CORRUPT;
    case EMEDIUMTYPE:
        return CLI_EXIT_NOT_LOADABLE;
    default:
        return CLI_EXIT_ERROR;
    }
}
