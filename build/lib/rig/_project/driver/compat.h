/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Beside the layers: what differs between the kernels we build for
 * (5.10 ... 7.3).  Header only; used by the middle and top layers; it calls
 * into the bottom layer (vmx_ops.S) and the kernel, never upwards.
 *
 * - MSRs: rdmsrl()/wrmsrl() became rdmsrq()/wrmsrq() in 6.16 (and the old
 *   names went away later).  rdmsr_safe()/wrmsr_safe() with 32-bit halves
 *   exist under the same names on every kernel from 5.10 to 7.3, so we build
 *   64-bit accessors on top of them.
 *
 * - CR4.VMXE: the kernel keeps a per-CPU shadow of CR4.  Where
 *   cr4_update_irqsoff() is exported to every module (5.8 ... 7.1),
 *   cr4_set_bits()/cr4_clear_bits() update register and shadow together.
 *   From 7.2 it is exported only to KVM's modules; there we write CR4 with
 *   vml_write_cr4() inside the IRQs-off window and write back the original
 *   value before interrupts are enabled again, so the shadow is never
 *   observed stale (see README, "CR4.VMXE and the kernel's CR4 shadow").
 *   Kbuild decides by reading the kernel's Module.symvers and defines
 *   VMLAUNCH_CR4_HELPERS when the helper is usable; `make VMLAUNCH_CR4=raw`
 *   forces the raw path (for testing it on older kernels).
 *
 * - cpuid_ecx(): asm/processor.h up to 6.14, asm/cpuid/api.h from 6.15.
 *
 * - intel_pt_handle_vmx(): Intel PT must be told before VMXON on CPUs whose
 *   PT cannot trace in VMX operation.  Called when exported to us
 *   (VMLAUNCH_HAVE_PT_HANDLE_VMX, also detected by Kbuild).
 *
 * - syscore: register_syscore_ops(struct syscore_ops *) with callbacks
 *   without arguments (5.10, 6.1); register_syscore(struct syscore *) with
 *   a data pointer in newer kernels (Debian 6.12.117, 7.2, 7.3).  Kbuild
 *   defines VMLAUNCH_SYSCORE_DATA when register_syscore is exported.
 *
 * - Emergency VMXOFF (crash/kdump NMI shootdown, emergency_restart(),
 *   stop-NMI).  5.10: cpu_emergency_vmxoff() tests the *hardware* CR4.VMXE
 *   and executes VMXOFF on every CPU, whoever entered VMX operation.  From
 *   6.6 (and in Debian's 6.1.0-56, which carries the backport: its
 *   virtext.h has lost cpu_emergency_vmxoff()) up to 7.1 the emergency
 *   paths only run the single callback registered with
 *   cpu_emergency_register_virt_callback(), a slot KVM owns.  7.2/7.3: the
 *   core virtualization code (asm/virt.h) executes VMXOFF itself where
 *   CR4.VMXE is set.  Kbuild defines VMLAUNCH_EMERGENCY_CALLBACK_ONLY where
 *   cpu_emergency_register_virt_callback is exported; holding VMX there is
 *   opt-in only (README "Crash paths").
 *
 * - do_machine_check(): exported (GPL) on all five kernels for KVM, which
 *   calls it after a machine-check exit.  Kbuild defines
 *   VMLAUNCH_HAVE_DO_MACHINE_CHECK when it is exported without a namespace;
 *   otherwise the #MC is raised again with "int $18" (vml_raise_mc()).
 *
 * - CR4.FRED (6.9+, opt-in): with FRED on, events are not delivered through
 *   the IDT, so "int $2"/"int $18" are no way to hand an NMI or #MC to the
 *   kernel; the driver declines (why=fred_enabled).
 */
#ifndef VMLAUNCH_COMPAT_H
#define VMLAUNCH_COMPAT_H

#include <linux/types.h>
#include <asm/msr.h>
#include <asm/processor.h>
/* cpuid_ecx() moved from asm/processor.h to asm/cpuid/api.h in 6.15. */
#if defined(__has_include)
#if __has_include(<asm/cpuid/api.h>)
#include <asm/cpuid/api.h>
#endif
#endif
#include <asm/processor-flags.h>
#ifdef VMLAUNCH_CR4_HELPERS
#include <asm/tlbflush.h>
#endif
#ifdef VMLAUNCH_HAVE_PT_HANDLE_VMX
#include <asm/perf_event.h>
#endif
#ifdef VMLAUNCH_HAVE_DO_MACHINE_CHECK
#include <asm/mce.h>
#include <asm/ptrace.h>
#include <asm/segment.h>
#endif

#ifndef X86_CR4_FRED
#define X86_CR4_FRED		(1ull << 32)
#endif

#include "vmx_ops.h"

/* Returns 0 or -EIO; *val is 0 when the read faulted. */
static inline int vml_rdmsr(u32 msr, u64 *val)
{
	u32 lo = 0, hi = 0;
	int err = rdmsr_safe(msr, &lo, &hi);

	*val = err ? 0 : ((u64)hi << 32) | lo;
	return err ? -EIO : 0;
}

static inline int vml_wrmsr(u32 msr, u64 val)
{
	return wrmsr_safe(msr, (u32)val, (u32)(val >> 32)) ? -EIO : 0;
}

/*
 * Set CR4.VMXE.  Must be called with IRQs disabled; @orig is CR4 as read in
 * the same IRQs-off section.
 */
static inline void vml_cr4_set_vmxe(unsigned long orig)
{
#ifdef VMLAUNCH_CR4_HELPERS
	(void)orig;
	cr4_set_bits(X86_CR4_VMXE);
#else
	vml_write_cr4(orig | X86_CR4_VMXE);
#endif
}

/* Clear CR4.VMXE again (same IRQs-off section as vml_cr4_set_vmxe()). */
static inline void vml_cr4_clear_vmxe(unsigned long orig)
{
#ifdef VMLAUNCH_CR4_HELPERS
	(void)orig;
	cr4_clear_bits(X86_CR4_VMXE);
#else
	vml_write_cr4(orig & ~X86_CR4_VMXE);
#endif
}

/* True where CR4.VMXE may stay set with IRQs on (hold mode possible). */
static inline bool vml_cr4_helpers(void)
{
#ifdef VMLAUNCH_CR4_HELPERS
	return true;
#else
	return false;
#endif
}

static inline const char *vml_cr4_mode_name(void)
{
#ifdef VMLAUNCH_CR4_HELPERS
	return "helpers";
#else
	return "irqsoff_raw";
#endif
}

/* Does the kernel's emergency path execute VMXOFF on a CPU we hold? */
static inline bool vml_emergency_vmxoff(void)
{
#ifdef VMLAUNCH_EMERGENCY_CALLBACK_ONLY
	return false;
#else
	return true;
#endif
}

static inline const char *vml_emergency_name(void)
{
	return vml_emergency_vmxoff() ? "generic" : "kvm_callback_only";
}

/* hold_vmx=auto: hold only where it is possible and a crash is covered. */
static inline bool vml_hold_default(void)
{
	return vml_cr4_helpers() && vml_emergency_vmxoff();
}

/*
 * Hand a machine check that a VM exit intercepted (exit reason 0 with
 * vector 18, or exit reason 41) to the kernel's machine-check handler, on
 * this CPU, IRQs off, right after the exit.  The registers are those of the
 * guest, which runs host kernel code at CPL 0: the handler judges the error
 * as one taken in kernel context at that RIP (logs it, clears MCIP; an
 * unrecoverable one panics, as it would without us).
 */
static inline void vml_forward_machine_check(unsigned long ip, unsigned long sp,
					     unsigned long flags)
{
#ifdef VMLAUNCH_HAVE_DO_MACHINE_CHECK
	struct pt_regs regs = {
		.ip = ip, .sp = sp, .flags = flags,
		.cs = __KERNEL_CS, .ss = __KERNEL_DS,
	};

	do_machine_check(&regs);
#else
	(void)ip; (void)sp; (void)flags;
	vml_raise_mc();
#endif
}

static inline const char *vml_mce_path_name(void)
{
#ifdef VMLAUNCH_HAVE_DO_MACHINE_CHECK
	return "do_machine_check";
#else
	return "int18";
#endif
}

static inline void vml_pt_handle_vmx(int on)
{
#ifdef VMLAUNCH_HAVE_PT_HANDLE_VMX
	intel_pt_handle_vmx(on);
#else
	(void)on;
#endif
}

#endif /* VMLAUNCH_COMPAT_H */
