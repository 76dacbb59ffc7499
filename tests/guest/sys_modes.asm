; Operating modes: 32-bit protected -> 16-bit protected -> real mode (IVT
; interrupt, segment arithmetic) -> 32-bit protected -> long mode (64-bit) ->
; compatibility mode -> legacy protected mode again. Each mode measures its
; default stack width (PUSH imm8) and computes something only it can; the
; results are printed from 32-bit protected mode at the end.
%include "guest.inc"

LOW_CODE     equ 0x8000            ; the 16-bit part runs from here (real-mode CS = 0x0800)
RESULTS      equ 0x7e00            ; words/dwords written by the 16-bit and 64-bit parts
LOW_STACK    equ 0x7000

SEL_CODE32   equ 0x08
SEL_DATA32   equ 0x10
SEL_CODE16   equ 0x18              ; base LOW_CODE, limit 64 KiB, 16-bit
SEL_DATA16   equ 0x20              ; base 0, limit 64 KiB, 16-bit (B = 0)
SEL_CODE64   equ 0x28

%define LOW(x) ((x) - low_start)

test_main:
    LOAD_GDT gdt_pointer, SEL_CODE32, SEL_DATA32
    ; 32-bit protected mode.
    mov ecx, esp
    push byte 0
    sub ecx, esp
    add esp, ecx
    CHECK_EQ ecx, 4, "protected32 push width"
    mov eax, cs
    CHECK_EQ eax, SEL_CODE32, "protected32 cs"

    ; Copy the 16-bit part below 1 MiB and enter it in 16-bit protected mode.
    mov esi, low_start
    mov edi, LOW_CODE
    mov ecx, low_end - low_start
    rep movsb
    mov [saved_esp], esp
    jmp SEL_CODE16:LOW(pm16)

back_in_pm32:
    mov ax, SEL_DATA32
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, [saved_esp]
    movzx eax, word [RESULTS + 0]
    CHECK_EQ eax, 2, "protected16 push width"
    movzx eax, word [RESULTS + 2]
    CHECK_EQ eax, 2, "real push width"
    movzx eax, word [RESULTS + 4]
    CHECK_EQ eax, 0x1234, "real int 0x50 handler result"
    movzx eax, word [RESULTS + 6]
    CHECK_EQ eax, 0xbeef, "real es:0x10 reads linear 0x7e10"
    movzx eax, word [RESULTS + 8]
    CHECK_EQ eax, 0x0800, "real cs"

    ; Long mode: identity-map the first 8 MiB with 2 MiB pages.
    mov dword [pml4], pdpt + 3
    mov dword [pdpt], page_directory + 3
    mov dword [page_directory + 0], 0x000083
    mov dword [page_directory + 8], 0x200083
    mov dword [page_directory + 16], 0x400083
    mov dword [page_directory + 24], 0x600083
    ENABLE_LONG_MODE pml4
    jmp SEL_CODE64:long64

bits 64
long64:
    mov rcx, rsp
    push byte 0
    sub rcx, rsp
    add rsp, rcx
    mov [RESULTS + 16], ecx
    mov rax, 0x123456789a
    shr rax, 4                         ; needs 64-bit registers
    mov [RESULTS + 20], eax
    shr rax, 32
    mov [RESULTS + 24], eax
    mov eax, cs
    mov [RESULTS + 28], eax
    ; To compatibility mode: far return to the 32-bit code segment.
    push SEL_CODE32
    push compat32
    o64 retf

bits 32
compat32:
    mov ecx, esp
    push byte 0
    sub ecx, esp
    add esp, ecx
    mov [RESULTS + 32], ecx
    mov ecx, 0xc0000080
    rdmsr
    shr eax, 10
    and eax, 1                         ; EFER.LMA
    mov [RESULTS + 36], eax
    ; Leave long mode: paging off (from compatibility mode), then LME off.
    mov eax, cr0
    and eax, 0x7fffffff
    mov cr0, eax
    mov ecx, 0xc0000080
    rdmsr
    and eax, ~(1 << 8)
    wrmsr
    rdmsr
    shr eax, 10
    and eax, 1
    mov [RESULTS + 40], eax

    CHECK_EQ [RESULTS + 16], 8, "long64 push width"
    CHECK_EQ [RESULTS + 20], 0x23456789, "long64 shr low"
    CHECK_EQ [RESULTS + 24], 1, "long64 shr high"
    CHECK_EQ [RESULTS + 28], SEL_CODE64, "long64 cs"
    CHECK_EQ [RESULTS + 32], 4, "compat push width"
    CHECK_EQ [RESULTS + 36], 1, "compat efer.lma"
    CHECK_EQ [RESULTS + 40], 0, "legacy again efer.lma"
    mov eax, cs
    CHECK_EQ eax, SEL_CODE32, "legacy again cs"
    ret

; ---- the 16-bit part (copied to LOW_CODE; offsets relative to low_start) ----
bits 16
low_start:
pm16:
    mov ax, SEL_DATA16
    mov ss, ax
    mov sp, LOW_STACK
    mov cx, sp
    push byte 0
    sub cx, sp
    add sp, cx
    mov [RESULTS + 0], cx
    ; Real mode: PE off, then a far jump loads a real-mode CS.
    mov eax, cr0
    and eax, ~1
    mov cr0, eax
    jmp 0x0800:LOW(real)
real:
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, LOW_STACK
    mov cx, sp
    push byte 0
    sub cx, sp
    add sp, cx
    mov [RESULTS + 2], cx
    ; INT 0x50 through the IVT at linear 0.
    lidt [LOW(ivt_pointer) + LOW_CODE]
    mov word [0x50 * 4], LOW(int50)
    mov word [0x50 * 4 + 2], 0x0800
    int 0x50
    ; Segment arithmetic: ES = 0x07e0 -> base 0x7e00.
    mov word [0x7e10], 0xbeef
    mov ax, 0x07e0
    mov es, ax
    mov ax, [es:0x10]
    mov [RESULTS + 6], ax
    mov ax, cs
    mov [RESULTS + 8], ax
    ; Back to protected mode.
    lgdt [LOW(gdt_pointer_low) + LOW_CODE]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    jmp dword SEL_CODE32:back_in_pm32
int50:
    mov word [RESULTS + 4], 0x1234
    iret
ivt_pointer:
    dw 0x3ff
    dd 0
gdt_pointer_low:
    dw gdt_end - gdt - 1
    dd gdt
low_end:

bits 32
align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff              ; 0x08 code32
    dq 0x00cf92000000ffff              ; 0x10 data32
    dq 0x00009a008000ffff              ; 0x18 code16, base LOW_CODE
    dq 0x000092000000ffff              ; 0x20 data16
    dq 0x00209a0000000000              ; 0x28 code64
gdt_end:
gdt_pointer:
    dw gdt_end - gdt - 1
    dd gdt
saved_esp: dd 0

align 4096
pml4: times 4096 db 0
pdpt: times 4096 db 0
page_directory: times 4096 db 0

%include "guest_end.inc"
