; Ring 3 with IOPL 0 in 32-bit protected mode (entered with SYSEXIT, left with
; SYSENTER): CLI, STI, HLT, MOV from CR0, RDMSR, RDTSC under CR4.TSD, WBINVD and
; LGDT raise #GP(0); POPF keeps IF and IOPL. The #GP handler (ring 0, stack from
; the TSS) records the fault and IRETs back to ring 3.
%include "guest.inc"

SYSENTER_CS  equ 0x174
SYSENTER_ESP equ 0x175
SYSENTER_EIP equ 0x176

; TRY: the next faulting instruction resumes at the matching END_TRY.
%macro TRY 0
    mov dword [last_vector], 0xff
    mov dword [last_error], 0xffffffff
    mov dword [resume_at], %%resume
    %define TRY_RESUME %%resume
%endmacro
%macro END_TRY 0
TRY_RESUME:
%endmacro
; SAVE_RESULT n: stores the vector and error code of try n for printing in ring 0.
%macro SAVE_RESULT 1
    mov eax, [last_vector]
    mov [results + 8 * %1], eax
    mov eax, [last_error]
    mov [results + 8 * %1 + 4], eax
%endmacro

test_main:
    lgdt [gdt_pointer]
    jmp 0x08:.flat
.flat:
    mov ax, 0x10
    mov ss, ax
    mov ax, 0x23                        ; ring 3 data for both rings: IRET to ring 3 keeps it
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov eax, tss
    mov [gdt + 0x28 + 2], ax
    shr eax, 16
    mov [gdt + 0x28 + 4], al
    mov [gdt + 0x28 + 7], ah
    mov dword [tss + 4], kernel_stack_top   ; ESP0
    mov dword [tss + 8], 0x10               ; SS0
    mov ax, 0x28
    ltr ax
    mov eax, isr_gp
    mov [idt + 13 * 8], ax
    mov word [idt + 13 * 8 + 2], 0x08
    mov word [idt + 13 * 8 + 4], 0x8e00
    shr eax, 16
    mov [idt + 13 * 8 + 6], ax
    lidt [idt_pointer]
    mov al, 0xff                        ; mask both PICs: ring 3 runs with IF = 1
    out 0x21, al
    out 0xa1, al

    mov ecx, SYSENTER_CS                ; 0x08/0x10 ring 0, 0x1b/0x23 ring 3
    mov eax, 0x08
    xor edx, edx
    wrmsr
    mov ecx, SYSENTER_ESP
    mov eax, sysenter_stack_top
    wrmsr
    mov ecx, SYSENTER_EIP
    mov eax, back_in_ring0
    wrmsr
    mov eax, cr4
    or eax, 1 << 2                      ; TSD
    mov cr4, eax
    mov [saved_esp], esp
    pushfd
    and dword [esp], ~0x3000            ; IOPL 0
    popfd
    sti
    mov ecx, user_stack_top
    mov edx, ring3
    sysexit

ring3:
    TRY
    cli
    END_TRY
    SAVE_RESULT 0
    TRY
    sti
    END_TRY
    SAVE_RESULT 1
    TRY
    hlt
    END_TRY
    SAVE_RESULT 2
    TRY
    mov eax, cr0
    END_TRY
    SAVE_RESULT 3
    TRY
    mov ecx, 0x10
    rdmsr
    END_TRY
    SAVE_RESULT 4
    TRY
    rdtsc
    END_TRY
    SAVE_RESULT 5
    TRY
    wbinvd
    END_TRY
    SAVE_RESULT 6
    TRY
    lgdt [gdt_pointer]
    END_TRY
    SAVE_RESULT 7
    ; POPF at CPL 3 > IOPL 0: IF (set) and IOPL (0) do not change, CF does.
    pushfd
    pop eax
    and eax, ~0x200
    or eax, 0x3001
    push eax
    popfd
    pushfd
    pop dword [popf_result]
    sysenter

back_in_ring0:
    mov ax, 0x10
    mov ss, ax
    mov esp, [saved_esp]
    pushfd
    pop dword [sysenter_flags]
    CHECK_EQ [results + 0], 13, "cli vector"
    CHECK_EQ [results + 4], 0, "cli error"
    CHECK_EQ [results + 8], 13, "sti vector"
    CHECK_EQ [results + 16], 13, "hlt vector"
    CHECK_EQ [results + 24], 13, "mov from cr0 vector"
    CHECK_EQ [results + 32], 13, "rdmsr vector"
    CHECK_EQ [results + 40], 13, "rdtsc with tsd vector"
    CHECK_EQ [results + 48], 13, "wbinvd vector"
    CHECK_EQ [results + 56], 13, "lgdt vector"
    CHECK_EQ [results + 60], 0, "lgdt error"
    mov eax, [popf_result]
    and eax, 0x3201
    CHECK_EQ eax, 0x201, "popf if iopl cf"
    mov eax, [sysenter_flags]
    and eax, 0x200
    CHECK_EQ eax, 0, "sysenter clears if"
    mov eax, cr4
    and eax, ~(1 << 2)
    mov cr4, eax
    ret

isr_gp:                                 ; ring 0; the frame holds ring 3's SS:ESP
    mov dword [last_vector], 13
    pop dword [last_error]
    push eax
    mov eax, [resume_at]
    mov [esp + 4], eax
    pop eax
    iretd

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff               ; 0x08 ring 0 code
    dq 0x00cf92000000ffff               ; 0x10 ring 0 data
    dq 0x00cffa000000ffff               ; 0x18 ring 3 code
    dq 0x00cff2000000ffff               ; 0x20 ring 3 data
    dq 0x0000890000000067               ; 0x28 32-bit TSS (base filled in)
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
saved_esp: dd 0
popf_result: dd 0
sysenter_flags: dd 0
results: times 16 dd 0
tss: times 104 db 0
align 16
kernel_stack: times 1024 db 0
kernel_stack_top:
sysenter_stack: times 1024 db 0
sysenter_stack_top:
user_stack: times 1024 db 0
user_stack_top:

%include "guest_end.inc"
