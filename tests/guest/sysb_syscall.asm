; Fast system calls. Part A, 32-bit protected mode: SYSEXIT into ring 3 and
; SYSENTER back. Part B, long mode (identity-mapped with 2 MiB pages): SYSRET
; into 64-bit ring 3, SYSCALL to LSTAR (SFMASK applied, RCX/R11 saved), SYSRET
; to compatibility-mode ring 3, SYSCALL from there to CSTAR, SWAPGS, and a far
; return to 32-bit ring-0 code that prints what each side saw.
%include "guest.inc"

EFER           equ 0xc0000080
STAR           equ 0xc0000081
LSTAR          equ 0xc0000082
CSTAR          equ 0xc0000083
SFMASK         equ 0xc0000084
GS_BASE        equ 0xc0000101
KERNEL_GS_BASE equ 0xc0000102
SYSENTER_CS    equ 0x174
SYSENTER_ESP   equ 0x175
SYSENTER_EIP   equ 0x176

test_main:
    lgdt [gdt_pointer]
    jmp 0x08:.flat
.flat:
    mov ax, 0x18
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov al, 0xff                        ; mask both PICs: ring 3 runs with IF = 1
    out 0x21, al
    out 0xa1, al

    ; ---- Part A: SYSENTER/SYSEXIT (SYSENTER_CS = 0x38: 0x38/0x40 ring 0, 0x4b/0x53 ring 3)
    mov ecx, SYSENTER_CS
    mov eax, 0x38
    xor edx, edx
    wrmsr
    mov ecx, SYSENTER_ESP
    mov eax, sysenter_stack_top
    wrmsr
    mov ecx, SYSENTER_EIP
    mov eax, sysenter_entry
    wrmsr
    mov [saved_esp], esp
    sti
    mov ecx, user_stack_top
    mov edx, user32_code
    sysexit

user32_code:                            ; CPL 3
    mov [a_user_cs], cs
    mov [a_user_ss], ss
    mov [a_user_esp], esp
    mov eax, 0x1234
    sysenter

sysenter_entry:                         ; CPL 0
    mov [a_kernel_cs], cs
    mov [a_kernel_ss], ss
    mov [a_kernel_esp], esp
    pushfd
    pop dword [a_kernel_flags]
    mov [a_eax], eax
    mov ax, 0x18
    mov ss, ax
    mov esp, [saved_esp]
    jmp 0x08:part_a_results

part_a_results:
    CHECK_EQ [a_user_cs], 0x4b, "sysexit user cs"
    CHECK_EQ [a_user_ss], 0x53, "sysexit user ss"
    CHECK_EQ [a_user_esp], user_stack_top, "sysexit user esp"
    CHECK_EQ [a_kernel_cs], 0x38, "sysenter cs"
    CHECK_EQ [a_kernel_ss], 0x40, "sysenter ss"
    CHECK_EQ [a_kernel_esp], sysenter_stack_top, "sysenter esp"
    mov eax, [a_kernel_flags]
    and eax, 0x200
    CHECK_EQ eax, 0, "sysenter if"
    CHECK_EQ [a_eax], 0x1234, "sysenter eax"

    ; ---- Part B: long mode. Identity map the first GiB (user-accessible 2 MiB pages).
    mov edi, pd
    mov eax, 0x87                       ; present, writable, user, 2 MiB
    mov ecx, 512
.fill:
    mov [edi], eax
    mov dword [edi + 4], 0
    add eax, 0x200000
    add edi, 8
    loop .fill
    mov eax, pdpt
    or eax, 7
    mov [pml4], eax
    mov eax, pd
    or eax, 7
    mov [pdpt], eax
    mov eax, cr4
    or eax, 1 << 5                      ; PAE
    mov cr4, eax
    mov eax, pml4
    mov cr3, eax
    mov ecx, EFER
    rdmsr
    or eax, (1 << 8) | 1                ; LME, SCE
    wrmsr
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax                        ; compatibility mode now
    mov ecx, EFER
    rdmsr
    mov [b_efer], eax
    jmp 0x10:long_entry

bits 64
long_entry:
    mov ecx, STAR
    xor eax, eax
    mov edx, 0x00200010                 ; SYSRET base 0x20, SYSCALL CS 0x10
    wrmsr
    mov ecx, LSTAR
    mov eax, syscall64_entry
    xor edx, edx
    wrmsr
    mov ecx, CSTAR
    mov eax, syscall_compat_entry
    wrmsr
    mov ecx, SFMASK
    mov eax, 0x4700                     ; TF IF DF NT
    wrmsr
    mov [rel saved_rsp], rsp
    mov rcx, user64_code
    mov r11, 0x202
    mov rsp, user_stack_top
    o64 sysret

user64_code:                            ; CPL 3, 64-bit
    mov [rel b_user_cs], cs
    mov [rel b_user_ss], ss
    std
    mov eax, 0x1234
    mov rbx, 0xfeedface12345678
    syscall
after_user64_syscall:
    ud2

syscall64_entry:                        ; CPL 0 from LSTAR
    mov [rel b_rcx], rcx
    mov [rel b_r11], r11
    mov [rel b_kernel_cs], cs
    mov [rel b_kernel_ss], ss
    pushfq
    pop qword [rel b_kernel_flags]
    mov [rel b_rax], rax
    mov [rel b_rbx], rbx
    cld
    mov ecx, user32c_code
    mov r11d, 0x202
    sysret                              ; to compatibility mode

bits 32
user32c_code:                           ; CPL 3, compatibility mode
    mov [c_user_cs], cs
    mov eax, 0x5678
    syscall
after_compat_syscall:
    ud2

bits 64
syscall_compat_entry:                   ; CPL 0 from CSTAR
    mov [rel c_rcx], rcx
    mov [rel c_kernel_cs], cs
    mov [rel c_rax], rax
    mov ecx, GS_BASE
    mov eax, 0x1000
    xor edx, edx
    wrmsr
    mov ecx, KERNEL_GS_BASE
    mov eax, 0x2000
    wrmsr
    swapgs
    mov ecx, GS_BASE
    rdmsr
    mov [rel d_gs], eax
    mov ecx, KERNEL_GS_BASE
    rdmsr
    mov [rel d_kernel_gs], eax
    mov rsp, [rel saved_rsp]
    push 0x08
    push part_b_results
    retfq

bits 32
part_b_results:                         ; CPL 0, compatibility mode
    mov eax, [b_efer]
    and eax, 0x501
    CHECK_EQ eax, 0x501, "efer lma lme sce"
    CHECK_EQ [b_user_cs], 0x33, "sysret64 user cs"
    CHECK_EQ [b_user_ss], 0x2b, "sysret64 user ss"
    CHECK_EQ [b_rcx], after_user64_syscall, "syscall rcx"
    CHECK_EQ [b_rcx + 4], 0, "syscall rcx high"
    mov eax, [b_r11]
    and eax, 0x4702
    CHECK_EQ eax, 0x602, "syscall r11 if df"
    CHECK_EQ [b_kernel_cs], 0x10, "syscall cs"
    CHECK_EQ [b_kernel_ss], 0x18, "syscall ss"
    mov eax, [b_kernel_flags]
    and eax, 0x4700
    CHECK_EQ eax, 0, "sfmask applied"
    CHECK_EQ [b_rax], 0x1234, "syscall rax"
    CHECK_EQ [b_rbx + 4], 0xfeedface, "syscall rbx high"
    CHECK_EQ [c_user_cs], 0x23, "sysret32 user cs"
    CHECK_EQ [c_rcx], after_compat_syscall, "compat syscall rcx"
    CHECK_EQ [c_kernel_cs], 0x10, "compat syscall cs"
    CHECK_EQ [c_rax], 0x5678, "compat syscall eax"
    CHECK_EQ [d_gs], 0x2000, "gs base after swapgs"
    CHECK_EQ [d_kernel_gs], 0x1000, "kernel gs base after swapgs"
    ret

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff               ; 0x08 ring 0 code, 32-bit
    dq 0x00af9a000000ffff               ; 0x10 ring 0 code, 64-bit (SYSCALL CS)
    dq 0x00cf92000000ffff               ; 0x18 ring 0 data (SYSCALL SS)
    dq 0x00cffa000000ffff               ; 0x20 ring 3 code, 32-bit (SYSRET to compatibility mode)
    dq 0x00cff2000000ffff               ; 0x28 ring 3 data (SYSRET SS)
    dq 0x00affa000000ffff               ; 0x30 ring 3 code, 64-bit (SYSRET to 64-bit mode)
    dq 0x00cf9a000000ffff               ; 0x38 SYSENTER CS
    dq 0x00cf92000000ffff               ; 0x40 SYSENTER SS
    dq 0x00cffa000000ffff               ; 0x48 SYSEXIT CS
    dq 0x00cff2000000ffff               ; 0x50 SYSEXIT SS
gdt_end:
gdt_pointer:
    dw gdt_end - gdt - 1
    dd gdt
align 8
saved_esp: dd 0
saved_rsp: dq 0
a_user_cs: dd 0
a_user_ss: dd 0
a_user_esp: dd 0
a_kernel_cs: dd 0
a_kernel_ss: dd 0
a_kernel_esp: dd 0
a_kernel_flags: dd 0
a_eax: dd 0
b_efer: dd 0
b_user_cs: dd 0
b_user_ss: dd 0
b_kernel_cs: dd 0
b_kernel_ss: dd 0
align 8
b_rcx: dq 0
b_r11: dq 0
b_kernel_flags: dq 0
b_rax: dq 0
b_rbx: dq 0
c_user_cs: dd 0
c_rcx: dq 0
c_kernel_cs: dd 0
c_rax: dq 0
d_gs: dd 0
d_kernel_gs: dd 0

align 4096
pml4: times 4096 db 0
pdpt: times 4096 db 0
pd: times 4096 db 0
align 16
user_stack: times 1024 db 0
user_stack_top:
sysenter_stack: times 1024 db 0
sysenter_stack_top:

%include "guest_end.inc"
