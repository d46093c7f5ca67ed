// SPDX-License-Identifier: GPL-2.0
/*
 * vmlaunch.ko: launch a guest that mirrors the host on every online CPU,
 * take its VMCALL exit, report each step on the kernel log.
 *
 * Top layer (Linux glue): module init/exit, parameters, CPU hotplug
 * (online: launch; offline: VMX teardown), reboot notifier, syscore
 * suspend.  Owns the module state (struct vml_module) and hands it to the
 * files it calls; the per-CPU state machine below gets its config and
 * record as arguments.  See README.md for the design and the dmesg format.
 */
#define pr_fmt(fmt) "vmlaunch: " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/init.h>
#include <linux/cpu.h>
#include <linux/cpuhotplug.h>
#include <linux/percpu.h>
#include <linux/reboot.h>
#include <linux/notifier.h>
#include <linux/string.h>
#include <linux/mutex.h>
#include <linux/smp.h>
#include <linux/syscore_ops.h>

#include "vml_cpu.h"
#include "vmlaunch_module.h"
#include "vmlaunch_report.h"
#include "vmlaunch_sysfs.h"
#include "compat.h"

static char break_field[32] = "none";
module_param_string(break_field, break_field, sizeof(break_field), 0444);
MODULE_PARM_DESC(break_field,
		 "Deliberately break one VMCS field: none (default), host_addr_space_size (VMfailValid, error 8), guest_rflags_bit1 (VM-entry failure, exit reason 0x80000021)");

static unsigned int roundtrips;
module_param(roundtrips, uint, 0444);
MODULE_PARM_DESC(roundtrips,
		 "After the first VMCALL exit, VMRESUME the guest N more times (0..10000) and report min/median cycles per round trip");

static char hold_vmx[8] = "auto";
module_param_string(hold_vmx, hold_vmx, sizeof(hold_vmx), 0444);
MODULE_PARM_DESC(hold_vmx,
		 "Keep VMX on between load and rmmod: auto (default: yes where cr4_mode=helpers and the kernel's emergency paths execute VMXOFF: 5.10), 0 (leave VMX inside the launch window), 1 (opt-in, needs cr4_mode=helpers; on 6.1.0-56/6.12 a crash kernel then finds our CPUs in VMX operation)");

static DEFINE_PER_CPU(struct vml_cpu, vml_cpus);

static struct vml_module vml_mod = {
	.lock = __MUTEX_INITIALIZER(vml_mod.lock),
	.cpus = &vml_cpus,
};

/*
 * Glue-only state, read and written under cpus_read_lock() or vml_mod.lock:
 * in_init and unloading are set and cleared with the CPU hotplug lock held,
 * so no hotplug callback outside init/unload ever sees them set.
 */
static bool vml_in_init;	/* cpuhp_setup_state_cpuslocked() running */
static bool vml_unloading;	/* __cpuhp_remove_state_cpuslocked() running */
static unsigned int vml_pages_freed;
static int vml_hp_state = -1;
static bool vml_syscore_registered;

static struct vml_cpu *vml_cpu_state(unsigned int cpu)
{
	return vml_mod_cpu(&vml_mod, cpu);
}

/* cpuhp "online" callback: runs on @cpu, in its hotplug thread. */
static int vml_cpu_online(unsigned int cpu)
{
	struct vml_cpu *c = vml_cpu_state(cpu);
	unsigned int n;
	int err;

	mutex_lock(&vml_mod.lock);
	if (c->vmx_on) {
		/*
		 * The offline callback refused to let this CPU go (its VMXOFF
		 * failed: it is still in VMX operation) and cpuhp rolls back:
		 * it stays as it is.
		 */
		pr_info("cpu=%u status info held=1 cr4.vmxe=1 -- CPU %u stays online in VMX operation (its teardown failed)\n",
			cpu, cpu);
		mutex_unlock(&vml_mod.lock);
		return 0;
	}
	vml_cpu_free(c);		/* nothing left normally; be sure */
	memset(c, 0, sizeof(*c));

	if (vml_mod.shutting_down) {
		c->attempted = true;
		c->stage = VML_ST_CHECK;
		c->result = VML_RES_DECLINED;
		c->err = VML_E_SHUTDOWN;
		c->why = "shutting_down";
		err = c->err;
	} else {
		err = vml_cpu_run(cpu, c, &vml_mod.cfg);
	}
	vml_report_cpu(&vml_mod, cpu, c);

	if (err) {
		/* A failed or declined CPU keeps nothing. */
		n = vml_cpu_free(c);
		vml_pages_freed += n;
		if (!vml_in_init) {
			pr_info("cpu=%u freed ok pages=%u -- CPU %u came online but did not launch (errno=%d); freed its pages\n",
				cpu, n, cpu, err);
			/* Never keep a CPU from coming online. */
			err = 0;
		}
	}
	mutex_unlock(&vml_mod.lock);
	return err;
}

/* IPI / local call: release VMX on the CPU this runs on (IRQs off). */
static void vml_release_this_cpu(void *at)
{
	vml_cpu_release(vml_cpu_state(smp_processor_id()),
			(enum vml_at)(unsigned long)at);
}

/* Same, but only where VMX is held (reboot: other CPUs keep their record). */
static void vml_release_this_cpu_if_held(void *at)
{
	struct vml_cpu *c = vml_cpu_state(smp_processor_id());

	if (c->vmx_on)
		vml_cpu_release(c, (enum vml_at)(unsigned long)at);
}

/*
 * cpuhp "offline" callback: runs at rmmod, at CPU hot-unplug, and for the
 * CPUs already done when a later CPU fails during init (rollback).  In hold
 * mode this is where VMCLEAR + VMXOFF + CR4.VMXE clear happen on @cpu; in
 * window mode VMX was already left at load and only CR4 is checked.  The
 * work runs on @cpu with IRQs off (smp_call_function_single() runs it
 * locally: the callback is invoked in @cpu's own hotplug thread).
 * A CPU whose VMXOFF failed is still in VMX operation, where INIT is
 * blocked: at hot-unplug the callback returns -EBUSY and the CPU stays
 * online (cpuhp rolls back); at rmmod and rollback the return value is
 * ignored by cpuhp, the line says so.
 */
static int vml_cpu_offline(unsigned int cpu)
{
	struct vml_cpu *c = vml_cpu_state(cpu);
	enum vml_at at = vml_unloading ? VML_AT_UNLOAD :
			 vml_in_init ? VML_AT_ROLLBACK : VML_AT_HOTPLUG;
	unsigned int n;
	int ret;

	mutex_lock(&vml_mod.lock);
	vml_report_cpu_status(cpu, c);

	ret = smp_call_function_single(cpu, vml_release_this_cpu,
				       (void *)(unsigned long)at, 1);
	if (ret) {
		memset(&c->rel, 0, sizeof(c->rel));
		c->rel.at = at;
		c->rel.held = c->vmx_on;
		c->rel.ipi_err = ret;
		c->rel.unreported = true;
	}
	vml_report_release(&vml_mod, cpu, c);

	if (c->vmx_on && at == VML_AT_HOTPLUG) {
		mutex_unlock(&vml_mod.lock);
		return -EBUSY;	/* never offline a CPU in VMX operation */
	}
	n = vml_cpu_free(c);	/* keeps VMXON region + VMCS if still in VMX */
	vml_pages_freed += n;
	if (!vml_unloading && !vml_in_init)
		pr_info("cpu=%u freed ok pages=%u -- CPU %u going offline\n", cpu, n, cpu);
	mutex_unlock(&vml_mod.lock);
	return 0;
}

/*
 * Reboot, halt, power-off and kexec (kernel_restart_prepare() and friends
 * call the reboot notifiers).  Taking vml_mod.lock waits for a launch or a
 * teardown in progress in some CPU's hotplug thread; the flag stops new
 * launches.  In hold mode every CPU still in VMX operation leaves it now:
 * on_each_cpu() runs the release on each online CPU with IRQs off.  A CPU
 * that is offline holds nothing (its offline callback released it); one
 * that comes online later declines (shutting_down).
 */
static int vml_reboot(struct notifier_block *nb, unsigned long code, void *unused)
{
	unsigned int cpu, held = 0;

	mutex_lock(&vml_mod.lock);
	vml_mod.shutting_down = true;
	if (vml_mod.cfg.hold) {
		on_each_cpu(vml_release_this_cpu_if_held,
			    (void *)(unsigned long)VML_AT_REBOOT, 1);
		for_each_possible_cpu(cpu) {
			struct vml_cpu *c = vml_cpu_state(cpu);

			if (c->rel.unreported && c->rel.at == VML_AT_REBOOT) {
				held++;
				vml_report_release(&vml_mod, cpu, c);
			}
		}
	}
	mutex_unlock(&vml_mod.lock);
	pr_info("cpu=- status info event=reboot hold=%d released=%u -- launches blocked; VMX turned off on %u CPU(s) that held it\n",
		vml_mod.cfg.hold, held, held);
	return NOTIFY_DONE;
}

static struct notifier_block vml_reboot_nb = {
	.notifier_call = vml_reboot,
};

/*
 * System sleep / hibernation (hold mode only).  Non-boot CPUs go through
 * the cpuhp offline callback first (at=hotplug); the syscore suspend
 * callback then runs on the last CPU with IRQs off and nothing else
 * running, so no lock is taken.  VMX is not re-entered at resume: the
 * CPUs brought back online relaunch through the online callback, the boot
 * CPU stays out of VMX operation (rmmod reports held=0 for it).
 */
static int vml_suspend(void)
{
	unsigned int cpu = smp_processor_id();
	struct vml_cpu *c = vml_cpu_state(cpu);

	if (c->vmx_on) {
		vml_cpu_release(c, VML_AT_SUSPEND);
		vml_report_release(&vml_mod, cpu, c);
	}
	return 0;
}

#ifdef VMLAUNCH_SYSCORE_DATA
static int vml_syscore_suspend(void *data)
{
	return vml_suspend();
}

static const struct syscore_ops vml_syscore_ops = {
	.suspend = vml_syscore_suspend,
};

static struct syscore vml_syscore = {
	.ops = &vml_syscore_ops,
};

static void vml_syscore_register(void)
{
	register_syscore(&vml_syscore);
}

static void vml_syscore_unregister(void)
{
	unregister_syscore(&vml_syscore);
}
#else
static struct syscore_ops vml_syscore_ops = {
	.suspend = vml_suspend,
};

static void vml_syscore_register(void)
{
	register_syscore_ops(&vml_syscore_ops);
}

static void vml_syscore_unregister(void)
{
	unregister_syscore_ops(&vml_syscore_ops);
}
#endif

static const char *const break_values[] = {
	[VML_BREAK_NONE] = "none",
	[VML_BREAK_HOST_ADDR_SPACE_SIZE] = "host_addr_space_size",
	[VML_BREAK_GUEST_RFLAGS_BIT1] = "guest_rflags_bit1",
};

/*
 * Fill vml_mod.cfg.  Returns the errno; *param names the first offending
 * parameter.  Every parameter is parsed, so the load line can show each
 * one's value.
 */
static int vml_parse_params(const char **param, bool *hold_ok)
{
	struct vml_config *cfg = &vml_mod.cfg;
	size_t i;

	*param = NULL;
	for (i = 0; i < ARRAY_SIZE(break_values); i++) {
		if (sysfs_streq(break_field, break_values[i])) {
			cfg->brk = i;
			break;
		}
	}
	if (i == ARRAY_SIZE(break_values))
		*param = "break_field";
	cfg->roundtrips = roundtrips;
	if (roundtrips > VML_MAX_ROUNDTRIPS && !*param)
		*param = "roundtrips";

	*hold_ok = true;
	if (sysfs_streq(hold_vmx, "auto"))
		cfg->hold = vml_hold_default();
	else if (sysfs_streq(hold_vmx, "0"))
		cfg->hold = false;
	else if (sysfs_streq(hold_vmx, "1") && vml_cr4_helpers())
		cfg->hold = true;
	else
		*hold_ok = false;
	if (!*hold_ok) {
		cfg->hold = false;
		if (!*param)
			*param = "hold_vmx";
	}

	/* Free text of the rmmod "vmxoff info ... held=0" line. */
	if (cfg->hold)
		vml_mod.window_why = NULL;
	else if (!vml_cr4_helpers())
		vml_mod.window_why = "irqsoff_raw mode";
	else if (sysfs_streq(hold_vmx, "0"))
		vml_mod.window_why = "hold_vmx=0";
	else
		vml_mod.window_why = "window mode: the kernel's emergency VMXOFF is KVM's callback only";
	return *param ? VML_E_PARAM : 0;
}

static const char *vml_param_hint(const char *param)
{
	if (!strcmp(param, "break_field"))
		return "none|host_addr_space_size|guest_rflags_bit1";
	if (!strcmp(param, "roundtrips"))
		return "0..10000";
	return vml_cr4_helpers() ? "auto|0|1" : "auto|0; 1 needs cr4_mode=helpers";
}

static int __init vml_init(void)
{
	const char *param = NULL;
	bool hold_ok;
	int ret;

	BUILD_BUG_ON(offsetof(struct vml_host_tables, gdt.limit) != VML_HT_GDT + VML_HT_DT_LIMIT);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, idt.limit) != VML_HT_IDT + VML_HT_DT_LIMIT);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, tmp_gdt.limit) != VML_HT_TMP_GDT + VML_HT_DT_LIMIT);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, cs) != VML_HT_CS);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, ss) != VML_HT_SS);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, ds) != VML_HT_DS);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, es) != VML_HT_ES);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, fs) != VML_HT_FS);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, gs) != VML_HT_GS);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, tr) != VML_HT_TR);
	BUILD_BUG_ON(offsetof(struct vml_host_tables, ldtr) != VML_HT_LDTR);
	BUILD_BUG_ON(sizeof(struct vml_host_tables) != VML_HT_SIZE);

	ret = vml_parse_params(&param, &hold_ok);
	pr_info("cpu=- load info version=%d break=%s roundtrips=%u cr4_mode=%s hold=%s cpus=%u emergency=%s mce=%s -- vmlaunch loading\n",
		VML_FORMAT_VERSION,
		param && !strcmp(param, "break_field") ? "invalid" : vml_break_name(vml_mod.cfg.brk),
		roundtrips, vml_cr4_mode_name(),
		!hold_ok ? "invalid" : vml_mod.cfg.hold ? "1" : "0", num_online_cpus(),
		vml_emergency_name(), vml_mce_path_name());
	if (ret) {
		pr_err("cpu=- load FAIL errno=%d param=%s -- FAIL: invalid value for %s (%s)\n",
		       ret, param, param, vml_param_hint(param));
		goto out_freed;
	}

	ret = vml_sysfs_init(&vml_mod);
	if (ret) {
		pr_err("cpu=- load FAIL errno=%d -- FAIL: cannot create /sys/kernel/vmlaunch\n", ret);
		goto out_freed;
	}
	register_reboot_notifier(&vml_reboot_nb);
	if (vml_mod.cfg.hold) {
		vml_syscore_register();
		vml_syscore_registered = true;
	}

	/*
	 * With the hotplug lock held across the whole setup, a CPU coming
	 * online right after it sees vml_in_init already clear (and is never
	 * refused), and one cannot come online in the middle.
	 */
	cpus_read_lock();
	vml_in_init = true;
	ret = cpuhp_setup_state_cpuslocked(CPUHP_AP_ONLINE_DYN, "vmlaunch:online",
					   vml_cpu_online, vml_cpu_offline);
	vml_in_init = false;
	cpus_read_unlock();
	if (ret < 0) {
		if (vml_syscore_registered)
			vml_syscore_unregister();
		vml_syscore_registered = false;
		unregister_reboot_notifier(&vml_reboot_nb);
		vml_sysfs_exit();
		goto out_freed;
	}
	vml_hp_state = ret;
	return 0;

out_freed:
	pr_info("cpu=- freed ok pages=%u errno=%d -- load failed, freed %u pages, nothing left behind\n",
		vml_pages_freed, ret, vml_pages_freed);
	return ret;
}

static void __exit vml_exit(void)
{
	cpus_read_lock();
	mutex_lock(&vml_mod.lock);
	vml_unloading = true;
	vml_pages_freed = 0;	/* count what the unload itself frees */
	mutex_unlock(&vml_mod.lock);
	/* VMXOFF on each CPU (hold mode); at=unload, never a hotplug. */
	__cpuhp_remove_state_cpuslocked(vml_hp_state, true);
	cpus_read_unlock();
	if (vml_syscore_registered)
		vml_syscore_unregister();
	unregister_reboot_notifier(&vml_reboot_nb);
	vml_sysfs_exit();
	pr_info("cpu=- freed ok pages=%u -- freed %u pages\n", vml_pages_freed,
		vml_pages_freed);
	pr_info("cpu=- unload ok\n");
}

module_init(vml_init);
module_exit(vml_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Launch a host-mirroring VMX guest on each CPU, take its VMCALL exit and report every step");
MODULE_AUTHOR("vmlaunch project");
