// SPDX-License-Identifier: GPL-2.0
/*
 * kvm-witness: proves a CPU can still enter VMX non-root, by asking KVM to run a tiny guest.
 *
 *   kvm-witness          create a VM and a vCPU, run 3 bytes of real-mode code
 *                        (mov al,0x42; out 0x10,al; hlt) and check the two exits KVM reports
 *   kvm-witness --hold   the same, then keep the VM open until killed (kvm_intel keeps VMX on
 *                        for as long as a VM exists on kernels that enable it per VM)
 *
 * It prints one line, `kvm-witness: ok exits=io,hlt` or `kvm-witness: FAIL step=<s> ...`
 * (errno as a negative number and its name, or KVM's exit reason), and exits 0 or 1.
 * It runs in the rig's guests after the driver's last rmmod (the teardown witness: a CPU the
 * driver left in VMX operation, or with CR4.VMXE set, makes KVM fail with EBUSY) and as the
 * holder of VMX in the coexistence runs. Static, so a busybox initramfs can run it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define CODE_GPA 0x1000UL
#define OUT_PORT 0x10
#define OUT_VALUE 0x42

static int fail(const char *step)
{
	int e = errno;

	printf("kvm-witness: FAIL step=%s errno=%d name=%s\n", step, -e, strerrorname_np(e));
	return 1;
}

static const char *exit_name(__u32 reason)
{
	switch (reason) {
	case KVM_EXIT_IO: return "io";
	case KVM_EXIT_HLT: return "hlt";
	case KVM_EXIT_FAIL_ENTRY: return "fail_entry";
	case KVM_EXIT_INTERNAL_ERROR: return "internal_error";
	case KVM_EXIT_SHUTDOWN: return "shutdown";
	case KVM_EXIT_MMIO: return "mmio";
	default: return "other";
	}
}

static int unexpected(const struct kvm_run *run, const char *wanted)
{
	printf("kvm-witness: FAIL step=run wanted=%s exit=%s reason=%u", wanted,
	       exit_name(run->exit_reason), run->exit_reason);
	if (run->exit_reason == KVM_EXIT_FAIL_ENTRY)
		printf(" hw_entry_failure_reason=0x%llx",
		       (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
	if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR)
		printf(" suberror=%u", run->internal.suberror);
	printf("\n");
	return 1;
}

int main(int argc, char **argv)
{
	static const unsigned char code[] = { 0xb0, OUT_VALUE, 0xe6, OUT_PORT, 0xf4 };
	int hold = argc > 1 && strcmp(argv[1], "--hold") == 0;
	struct kvm_userspace_memory_region region;
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	struct kvm_run *run;
	int kvm, vm, vcpu, size;
	unsigned char *mem;

	setvbuf(stdout, NULL, _IONBF, 0);
	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		return fail("open_dev_kvm");
	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		return fail("create_vm");
	/* needed where KVM emulates real mode in vm86 (no unrestricted guest, e.g. Penryn) */
	if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL) < 0)
		return fail("set_tss_addr");
	mem = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return fail("mmap_memory");
	memcpy(mem, code, sizeof(code));
	region = (struct kvm_userspace_memory_region){
		.slot = 0, .guest_phys_addr = CODE_GPA, .memory_size = 0x1000,
		.userspace_addr = (unsigned long)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		return fail("set_memory_region");
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		return fail("create_vcpu");
	size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (size < 0)
		return fail("vcpu_mmap_size");
	run = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		return fail("mmap_vcpu");
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		return fail("get_sregs");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		return fail("set_sregs");
	memset(&regs, 0, sizeof(regs));
	regs.rip = CODE_GPA;
	regs.rflags = 0x2;
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		return fail("set_regs");
	if (ioctl(vcpu, KVM_RUN, 0) < 0)
		return fail("run");
	if (run->exit_reason != KVM_EXIT_IO || run->io.port != OUT_PORT ||
	    run->io.direction != KVM_EXIT_IO_OUT ||
	    ((unsigned char *)run)[run->io.data_offset] != OUT_VALUE)
		return unexpected(run, "io");
	if (ioctl(vcpu, KVM_RUN, 0) < 0)
		return fail("run");
	if (run->exit_reason != KVM_EXIT_HLT)
		return unexpected(run, "hlt");
	printf("kvm-witness: ok exits=io,hlt%s\n", hold ? " holding" : "");
	while (hold)
		pause();
	return 0;
}
