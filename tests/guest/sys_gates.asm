; Call gates and selector instructions: ring 3 calls a DPL-3 call gate into
; ring 0 (stack switch through the TSS, two parameters copied), RETF 8 returns
; to ring 3; IRET to ring 3 nulls DPL-0 data segments; LAR, LSL, VERR, VERW and
; ARPL at CPL 3; a JMP to a TSS switches tasks and IRET-less return by JMP.
%include "guest.inc"

SEL_CODE32   equ 0x08
SEL_DATA32   equ 0x10
SEL_CODE3    equ 0x1b
SEL_DATA3    equ 0x23
SEL_TSS      equ 0x28
SEL_GATE     equ 0x33              ; call gate, DPL 3, RPL 3
SEL_TSS_B    equ 0x38

test_main:
    LOAD_GDT gdt_pointer, SEL_CODE32, SEL_DATA32
    ; Patch descriptor bases (TSS, second TSS) and the call gate's offset.
    mov eax, tss
    mov [gdt + SEL_TSS + 2], ax
    shr eax, 16
    mov [gdt + SEL_TSS + 4], al
    mov [gdt + SEL_TSS + 7], ah
    mov eax, tss_b
    mov [gdt + SEL_TSS_B + 2], ax
    shr eax, 16
    mov [gdt + SEL_TSS_B + 4], al
    mov [gdt + SEL_TSS_B + 7], ah
    mov eax, gate_target
    mov [gdt + (SEL_GATE & ~3)], ax
    shr eax, 16
    mov [gdt + (SEL_GATE & ~3) + 6], ax
    mov eax, back_in_ring0
    mov [idt + 0x31 * 8], ax
    shr eax, 16
    mov [idt + 0x31 * 8 + 6], ax
    lidt [idt_pointer]
    mov dword [tss + 4], ring0_stack_top
    mov dword [tss + 8], SEL_DATA32
    mov ax, SEL_TSS
    ltr ax

    ; ---- to ring 3 ----
    mov [saved_esp], esp
    push dword SEL_DATA3
    push dword ring3_stack_top
    pushfd
    push dword SEL_CODE3
    push dword ring3
    iretd

back_in_ring0:
    mov ax, SEL_DATA32
    mov ds, ax
    mov es, ax
    mov esp, [saved_esp]
    CHECK_EQ [r_es_after_iret], 0, "es after iret to ring 3 (dpl-0 data nulled)"
    CHECK_EQ [r_gate_cpl], 0, "cpl inside the call gate"
    CHECK_EQ [r_param0], 0x1111, "first parameter copied"
    CHECK_EQ [r_param1], 0x2222, "second parameter copied"
    CHECK_EQ [r_old_cs], SEL_CODE3, "caller cs on the inner stack"
    CHECK_EQ [r_old_ss], SEL_DATA3, "caller ss on the inner stack"
    mov eax, ring3_stack_top - 8
    CHECK_EQ [r_old_esp], eax, "caller esp on the inner stack"
    CHECK_EQ [r_gate_esp], ring0_stack_top - 24, "inner esp after the call"
    CHECK_EQ [r_esp_after_retf], ring3_stack_top, "ring-3 esp after retf 8"
    CHECK_EQ [r_cpl_after_retf], 3, "cpl after retf"
    CHECK_EQ [r_lar], 0x00c0f300, "lar ring-3 data (accessed)"
    CHECK_EQ [r_lsl], 0xffffffff, "lsl ring-3 data"
    CHECK_EQ [r_flags + 0], 1, "lar zf"
    CHECK_EQ [r_flags + 4], 0, "lar on dpl-0 data zf"
    CHECK_EQ [r_flags + 8], 1, "verr data3 zf"
    CHECK_EQ [r_flags + 12], 1, "verw data3 zf"
    CHECK_EQ [r_flags + 16], 1, "verr code3 zf"
    CHECK_EQ [r_flags + 20], 0, "verw code3 zf"
    CHECK_EQ [r_flags + 24], 0, "verr beyond gdt zf"
    CHECK_EQ [r_flags + 28], 1, "arpl raises rpl zf"
    CHECK_EQ [r_arpl], 0x13, "arpl result"

    ; ---- task switch by JMP to a TSS, and back by JMP ----
    mov dword [tss_b + 0x20], task_b
    mov dword [tss_b + 0x24], 2
    mov dword [tss_b + 0x38], task_b_stack_top
    mov dword [tss_b + 0x4c], SEL_CODE32
    mov dword [tss_b + 0x48], SEL_DATA32
    mov dword [tss_b + 0x50], SEL_DATA32
    mov dword [tss_b + 0x54], SEL_DATA32
    mov dword [tss_b + 0x58], SEL_DATA32
    mov dword [tss_b + 0x5c], SEL_DATA32
    mov ebx, 0x5a5a
    jmp SEL_TSS_B:0
after_task_b:                          ; task A resumes here (its saved EIP) when task B jumps back
    CHECK_EQ ebx, 0x5a5a, "ebx restored from task a's tss"
    CHECK_EQ [r_task_b_tr], SEL_TSS_B, "tr inside task b"
    CHECK_EQ [r_task_b_ebx], 0, "ebx loaded from task b's tss"
    str ax
    movzx eax, ax
    CHECK_EQ eax, SEL_TSS, "tr back in task a"
    clts
    ret

task_b:
    str ax
    movzx eax, ax
    mov [r_task_b_tr], eax
    mov [r_task_b_ebx], ebx
    jmp SEL_TSS:0                      ; back to task A (its TSS is available again after the JMP)

; ---- ring 3 ----
ring3:
    mov ax, es
    movzx eax, ax
    push eax
    mov ax, SEL_DATA3
    mov ds, ax
    mov es, ax
    pop dword [r_es_after_iret]
    push dword 0x2222
    push dword 0x1111
    call SEL_GATE:0
    mov [r_esp_after_retf], esp
    mov eax, cs
    and eax, 3
    mov [r_cpl_after_retf], eax
    ; Selector inspection at CPL 3.
    mov edx, SEL_DATA3
    lar eax, edx
    mov [r_lar], eax
    setz byte [r_flags + 0]
    lsl eax, edx
    mov [r_lsl], eax
    mov edx, SEL_DATA32
    lar eax, edx
    setz byte [r_flags + 4]
    mov dx, SEL_DATA3
    verr dx
    setz byte [r_flags + 8]
    verw dx
    setz byte [r_flags + 12]
    mov dx, SEL_CODE3
    verr dx
    setz byte [r_flags + 16]
    verw dx
    setz byte [r_flags + 20]
    mov dx, 0x88
    verr dx
    setz byte [r_flags + 24]
    mov ax, 0x10
    mov cx, 3
    arpl ax, cx
    setz byte [r_flags + 28]
    movzx eax, ax
    mov [r_arpl], eax
    int 0x31                           ; DPL-3 gate back to ring 0

gate_target:                           ; ring 0, entered through the call gate
    mov eax, cs
    and eax, 3
    mov [r_gate_cpl], eax
    mov [r_gate_esp], esp
    mov eax, [esp + 4]
    mov [r_old_cs], eax
    mov eax, [esp + 8]
    mov [r_param0], eax
    mov eax, [esp + 12]
    mov [r_param1], eax
    mov eax, [esp + 16]
    mov [r_old_esp], eax
    mov eax, [esp + 20]
    mov [r_old_ss], eax
    retf 8

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff              ; 0x08 code32
    dq 0x00cf92000000ffff              ; 0x10 data32
    dq 0x00cffa000000ffff              ; 0x18 ring-3 code
    dq 0x00cff2000000ffff              ; 0x20 ring-3 data
    dq 0x0000890000000067              ; 0x28 TSS (base patched)
    dq 0x0000ec0200080000              ; 0x30 call gate: selector 0x08, 2 parameters, DPL 3 (offset patched)
    dq 0x0000890000000067              ; 0x38 TSS of task B (base patched)
gdt_end:
gdt_pointer:
    dw gdt_end - gdt - 1
    dd gdt
idt_pointer:
    dw 0x32 * 8 - 1
    dd idt
align 8
idt: times 0x31 dq 0
    dq 0x0000ee0000080000              ; 0x31: DPL-3 interrupt gate to back_in_ring0 (offset patched)
saved_esp: dd 0
r_es_after_iret: dd 0xff
r_gate_cpl: dd 0xff
r_gate_esp: dd 0
r_param0: dd 0
r_param1: dd 0
r_old_cs: dd 0
r_old_ss: dd 0
r_old_esp: dd 0
r_esp_after_retf: dd 0
r_cpl_after_retf: dd 0
r_lar: dd 0
r_lsl: dd 0
r_flags: times 8 dd 0
r_arpl: dd 0
r_task_b_tr: dd 0
r_task_b_ebx: dd 0xff
tss: times 0x68 db 0
tss_b: times 0x68 db 0
align 16
ring3_stack: times 1024 db 0
ring3_stack_top:
ring0_stack: times 1024 db 0
ring0_stack_top:
task_b_stack: times 1024 db 0
task_b_stack_top:

%include "guest_end.inc"
