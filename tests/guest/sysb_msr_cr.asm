; Control, debug and descriptor-table registers, MSRs and CPUID bits read back in
; 32-bit protected mode, plus the faults they raise (#GP, #UD, #NM) through a
; small IDT. Only architectural results are printed (values written and read
; back, fixed bits, fault vectors and error codes); model-specific results
; (RDTSCP, CPUID feature bits outside the set both qemu's default CPU and kiln
; report) are checked without printing. WRMSR value checks (PAT types, canonical
; LSTAR), TSC writes and invalid CR0/CR4 writes are unit-tested only: qemu's TCG
; accepts or ignores the former and mishandles the latter.
%include "guest.inc"

%define CR0_MP (1 << 1)
%define CR0_EM (1 << 2)
%define CR0_TS (1 << 3)
%define CR0_NE (1 << 5)
%define CR0_WP (1 << 16)
%define CR0_AM (1 << 18)
%define CR4_DE (1 << 3)
%define CR4_PSE (1 << 4)
%define CR4_PGE (1 << 7)
%define CR4_OSFXSR (1 << 9)
%define CR4_OSXMMEXCPT (1 << 10)

; TRY: the next faulting instruction resumes at the label given to END_TRY.
%macro TRY 0
    mov dword [last_vector], 0xff
    mov dword [last_error], 0xffffffff
    mov dword [resume_at], %%resume
    %define TRY_RESUME %%resume
%endmacro
%macro END_TRY 0
TRY_RESUME:
%endmacro

test_main:
    call setup_descriptors

    ; --- CR0: bits written read back; ET is hard-wired; PG without PE is #GP(0).
    mov eax, cr0
    and eax, ~(CR0_EM | CR0_TS | CR0_AM | (1 << 29) | (1 << 30))
    or eax, CR0_MP | CR0_NE | CR0_WP
    mov cr0, eax
    mov eax, cr0
    and eax, 0xe005003f
    CHECK_EQ eax, 0x00010033, "cr0"

    ; --- CR4: supported bits read back (a reserved bit hangs qemu's TCG, so the #GP(0) is
    ; unit-tested only).
    mov eax, CR4_DE | CR4_PSE | CR4_PGE | CR4_OSFXSR | CR4_OSXMMEXCPT
    mov cr4, eax
    mov eax, cr4
    CHECK_EQ eax, 0x00000698, "cr4"

    ; --- CR3 and CR2 hold what was written.
    mov eax, 0x00123000
    mov cr3, eax
    mov eax, cr3
    CHECK_EQ eax, 0x00123000, "cr3"
    mov eax, 0xdeadb000
    mov cr2, eax
    mov eax, cr2
    CHECK_EQ eax, 0xdeadb000, "cr2"

    ; --- LMSW sets TS (and cannot clear PE); SMSW reads the low word.
    smsw ax
    or ax, CR0_TS
    lmsw ax
    smsw eax
    and eax, 0xf
    CHECK_EQ eax, 0xb, "smsw after lmsw"

    ; --- CR0.TS: x87 and SSE raise #NM; CLTS clears it.
    TRY
    fninit
    END_TRY
    CHECK_EQ [last_vector], 7, "fninit with ts"
    TRY
    movaps xmm0, xmm1
    END_TRY
    CHECK_EQ [last_vector], 7, "movaps with ts"
    TRY
    fwait                               ; MP and TS
    END_TRY
    CHECK_EQ [last_vector], 7, "fwait with mp ts"
    clts
    TRY
    fninit
    movaps xmm0, xmm1
    END_TRY
    CHECK_EQ [last_vector], 0xff, "after clts"

    ; --- CR0.EM: SSE is #UD, x87 #NM; CR4.OSFXSR clear: SSE #UD.
    mov eax, cr0
    or eax, CR0_EM
    mov cr0, eax
    TRY
    movaps xmm0, xmm1
    END_TRY
    CHECK_EQ [last_vector], 6, "movaps with em"
    TRY
    fld1
    END_TRY
    CHECK_EQ [last_vector], 7, "fld1 with em"
    mov eax, cr0
    and eax, ~CR0_EM
    mov cr0, eax
    mov eax, cr4
    and eax, ~CR4_OSFXSR
    mov cr4, eax
    TRY
    xorps xmm0, xmm0
    END_TRY
    CHECK_EQ [last_vector], 6, "xorps without osfxsr"
    mov eax, cr4
    or eax, CR4_OSFXSR
    mov cr4, eax

    ; --- Debug registers: DR0-3 and DR7 read back; DR6/DR7 fixed bits; DR4/DR5 alias
    ; DR6/DR7 without CR4.DE and are #UD with it.
    mov eax, 0x12345678
    mov dr0, eax
    mov ebx, dr0
    CHECK_EQ ebx, 0x12345678, "dr0"
    mov eax, 0x9abcdef0
    mov dr3, eax
    mov ebx, dr3
    CHECK_EQ ebx, 0x9abcdef0, "dr3"
    xor eax, eax
    mov dr6, eax
    mov eax, dr6
    CHECK_EQ eax, 0xffff0ff0, "dr6 fixed bits"
    mov eax, 0x00000003
    mov dr7, eax
    mov eax, dr7
    CHECK_EQ eax, 0x00000403, "dr7"
    xor eax, eax
    mov dr7, eax
    TRY
    mov eax, dr5
    END_TRY
    CHECK_EQ [last_vector], 6, "dr5 with cr4.de"
    mov eax, cr4
    and eax, ~CR4_DE
    mov cr4, eax
    mov eax, dr4
    CHECK_EQ eax, 0xffff0ff0, "dr4 aliases dr6"

    ; --- Descriptor-table registers.
    sgdt [table_image]
    CHECK_EQ [table_image + 2], gdt, "sgdt base"
    movzx eax, word [table_image]
    CHECK_EQ eax, gdt_end - gdt - 1, "sgdt limit"
    sidt [table_image]
    CHECK_EQ [table_image + 2], idt, "sidt base"
    mov ax, 0x28
    ltr ax
    str eax
    CHECK_EQ eax, 0x28, "str"
    movzx eax, byte [gdt + 0x28 + 5]
    CHECK_EQ eax, 0x8b, "tss busy in gdt"
    TRY
    mov ax, 0x28
    ltr ax                              ; busy now
    END_TRY
    CHECK_EQ [last_vector], 13, "ltr busy vector"
    CHECK_EQ [last_error], 0x28, "ltr busy error"
    TRY
    mov ax, 0x08
    lldt ax                             ; a code segment is not an LDT
    END_TRY
    CHECK_EQ [last_error], 0x08, "lldt code segment error"
    mov ax, 0x30
    lldt ax
    sldt eax
    CHECK_EQ eax, 0x30, "sldt"

    ; --- MSRs written and read back.
    mov ecx, 0x174                      ; SYSENTER_CS
    mov eax, 0x10
    xor edx, edx
    wrmsr
    mov ecx, 0x176                      ; SYSENTER_EIP
    mov eax, 0xc0de0000
    wrmsr
    xor eax, eax
    rdmsr
    CHECK_EQ eax, 0xc0de0000, "sysenter_eip"
    mov ecx, 0x277                      ; PAT
    mov eax, 0x00070106
    mov edx, 0x00070406
    wrmsr
    xor eax, eax
    xor edx, edx
    rdmsr
    CHECK_EQ eax, 0x00070106, "pat low"
    CHECK_EQ edx, 0x00070406, "pat high"
    mov ecx, 0xc0000080                 ; EFER
    rdmsr
    or eax, 1                           ; SCE
    wrmsr
    rdmsr
    and eax, 0xd01
    CHECK_EQ eax, 1, "efer sce"
    mov ecx, 0xc0000082                 ; LSTAR
    mov eax, 0x11223344
    mov edx, 0xffff8000
    wrmsr
    xor eax, eax
    xor edx, edx
    rdmsr
    CHECK_EQ edx, 0xffff8000, "lstar high"
    mov ecx, 0xc0000102                 ; KERNEL_GS_BASE
    mov eax, 0x5000
    xor edx, edx
    wrmsr
    xor eax, eax
    rdmsr
    CHECK_EQ eax, 0x5000, "kernel_gs_base"

    ; --- CR4.TSD restricts RDTSC to CPL 0 only: it still works here.
    mov eax, cr4
    or eax, 1 << 2
    mov cr4, eax
    TRY
    rdtsc
    END_TRY
    CHECK_EQ [last_vector], 0xff, "rdtsc at cpl0 with tsd"

    ; --- RDTSCP returns TSC_AUX in ECX where the CPU has it (checked, not printed).
    mov eax, 0x80000001
    cpuid
    test edx, 1 << 27
    jz .no_rdtscp
    mov ecx, 0xc0000103
    mov eax, 42
    xor edx, edx
    wrmsr
    xor ecx, ecx
    rdtscp
    cmp ecx, 42
    jne FAIL
.no_rdtscp:

    ; --- CPUID: vendor-independent facts and the feature bits both CPUs report.
    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000001
    jb FAIL
    mov eax, 1
    cpuid
    ; FPU DE PSE TSC MSR PAE CX8 SEP MTRR PGE CMOV PAT CLFSH MMX FXSR SSE SSE2
    and edx, 0x0789b97d
    CHECK_EQ edx, 0x0789b97d, "cpuid 1 edx"
    mov eax, 0x80000001
    cpuid
    and edx, (1 << 11) | (1 << 20) | (1 << 29)
    CHECK_EQ edx, 0x20100800, "cpuid 80000001 edx syscall nx lm"
    ret

; A flat GDT with a TSS and an LDT, an IDT with #UD/#NM/#GP handlers.
setup_descriptors:
    lgdt [gdt_pointer]
    jmp 0x08:.reload
.reload:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    ; TSS descriptor base (low 24 bits in bytes 2-4, high 8 in byte 7)
    mov eax, tss
    mov [gdt + 0x28 + 2], ax
    shr eax, 16
    mov [gdt + 0x28 + 4], al
    mov [gdt + 0x28 + 7], ah
    mov eax, ldt
    mov [gdt + 0x30 + 2], ax
    shr eax, 16
    mov [gdt + 0x30 + 4], al
    mov [gdt + 0x30 + 7], ah
    mov eax, isr_ud
    mov edi, idt + 6 * 8
    call set_gate
    mov eax, isr_nm
    mov edi, idt + 7 * 8
    call set_gate
    mov eax, isr_gp
    mov edi, idt + 13 * 8
    call set_gate
    lidt [idt_pointer]
    ret

isr_ud:
    mov dword [last_vector], 6
    jmp resume
isr_nm:
    mov dword [last_vector], 7
    jmp resume
isr_gp:
    mov dword [last_vector], 13
    pop dword [last_error]
resume:
    push eax
    mov eax, [resume_at]
    mov [esp + 4], eax
    pop eax
    iretd

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff               ; 0x08 code
    dq 0x00cf92000000ffff               ; 0x10 data
    dq 0
    dq 0
    dq 0x0000890000000067               ; 0x28 available 32-bit TSS (base filled in)
    dq 0x000082000000000f               ; 0x30 LDT (base filled in)
gdt_end:
gdt_pointer:
    dw gdt_end - gdt - 1
    dd gdt
align 8
idt: times 32 dq 0
idt_pointer:
    dw 32 * 8 - 1
    dd idt
align 4
last_vector: dd 0
last_error: dd 0
resume_at: dd 0
table_image: times 8 db 0
tss: times 104 db 0
ldt: times 16 db 0

%include "guest_end.inc"
