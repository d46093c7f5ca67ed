/* SPDX-License-Identifier: GPL-2.0 */
#ifndef VMLAUNCH_VMX_ERRORS_H
#define VMLAUNCH_VMX_ERRORS_H

#include <linux/types.h>

/* Names from the Intel SDM; never NULL ("unknown ..." for gaps). */
const char *vml_insn_error_name(u32 error);	/* VM-instruction error 1..28 */
const char *vml_exit_reason_name(u32 basic);	/* basic exit reason */
const char *vml_field_name(u32 encoding);	/* VMCS fields this module writes */

#endif /* VMLAUNCH_VMX_ERRORS_H */
