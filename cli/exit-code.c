/* exit-code.c - the exit code of a failure: by the error's status, where the
 * layer that met it set one, else by the few errnos nvram.h reserves.
 * Apart from main.c so that tests/unit/test-status.c links it. */
#include <errno.h>
#include <stddef.h>

#include "cli.h"

int cli_exit_code(const struct nv_error *err, int code)
{
    static const int by_status[] = {
        [NV_STATUS_USAGE] = CLI_EXIT_USAGE,
        [NV_STATUS_CORRUPT] = CLI_EXIT_CORRUPT,
        [NV_STATUS_KEY_MISSING] = CLI_EXIT_KEY_MISSING,
        [NV_STATUS_KEY_WRONG] = CLI_EXIT_KEY_WRONG,
        [NV_STATUS_KEY_UNNEEDED] = CLI_EXIT_KEY_UNNEEDED,
        [NV_STATUS_BUSY] = CLI_EXIT_BUSY,
        [NV_STATUS_NOT_LOADABLE] = CLI_EXIT_NOT_LOADABLE,
        [NV_STATUS_IO] = CLI_EXIT_ERROR,
    };
    enum nv_status status = nv_error_status(err);
    if (status > NV_STATUS_UNSET && (size_t)status < sizeof(by_status) / sizeof(by_status[0]))
        return by_status[status];

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
