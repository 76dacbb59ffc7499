; The I/O permission bitmap at ring 3 with IOPL 0 (32-bit protected mode,
; entered with SYSEXIT, left with SYSENTER): IN/OUT/INS are allowed only when
; every port of the access is clear in the TSS bitmap and within the TSS
; limit; otherwise #GP(0). The #GP handler (ring 0, stack from the TSS)
; records the fault and IRETs back to ring 3.
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
    in al, 0x80                         ; allowed by the bitmap
    END_TRY
    SAVE_RESULT 0
    TRY
    in al, 0x81                         ; denied
    END_TRY
    SAVE_RESULT 1
    TRY
    in ax, 0x82                         ; 0x82 and 0x83 both allowed
    END_TRY
    SAVE_RESULT 2
    TRY
    in ax, 0x81                         ; 0x81 denied, 0x82 allowed: denied
    END_TRY
    SAVE_RESULT 3
    TRY
    in eax, 0x82                        ; 0x84 denied
    END_TRY
    SAVE_RESULT 4
    TRY
    mov dx, 0x3f8                       ; past the end of the bitmap (TSS limit)
    in al, dx
    END_TRY
    SAVE_RESULT 5
    TRY
    out 0x80, al                        ; allowed
    END_TRY
    SAVE_RESULT 6
    TRY
    mov dx, 0x81
    mov edi, scratch
    insb                                ; string forms consult the bitmap too
    END_TRY
    SAVE_RESULT 7
    sysenter

back_in_ring0:
    mov ax, 0x10
    mov ss, ax
    mov esp, [saved_esp]
    CHECK_EQ [results + 0], 0xff, "in 0x80 (allowed)"
    CHECK_EQ [results + 8], 13, "in 0x81 (denied)"
    CHECK_EQ [results + 12], 0, "in 0x81 error"
    CHECK_EQ [results + 16], 0xff, "in ax 0x82 (allowed)"
    CHECK_EQ [results + 24], 13, "in ax 0x81 (half denied)"
    CHECK_EQ [results + 32], 13, "in eax 0x82 (0x84 denied)"
    CHECK_EQ [results + 40], 13, "in 0x3f8 (past the bitmap)"
    CHECK_EQ [results + 48], 0xff, "out 0x80 (allowed)"
    CHECK_EQ [results + 56], 13, "insb 0x81 (denied)"
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
    dq 0x000089000000007a               ; 0x28 32-bit TSS with its I/O bitmap (base filled in)
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
scratch: dd 0
; TSS: I/O map base 104 (just after it); ports 0x00-0x8f described, all denied
; but 0x80, 0x82 and 0x83; then the mandatory 0xff byte. The limit ends there.
tss: times 0x66 db 0
    dw 104
iopb: times 16 db 0xff
    db 0xf2                             ; ports 0x80-0x87: 0x80, 0x82, 0x83 allowed
    db 0xff                             ; 0x88-0x8f
    db 0xff                             ; the byte after the map
align 16
kernel_stack: times 1024 db 0
kernel_stack_top:
sysenter_stack: times 1024 db 0
sysenter_stack_top:
user_stack: times 1024 db 0
user_stack_top:

%include "guest_end.inc"
