; Single step (EFLAGS.TF) in 32-bit protected mode and in 64-bit long mode:
; the #DB handler counts the traps and logs where each one returns to (as an
; offset from the start of the stepped sequence) and the DR6 status bits
; (BS must be set; B0-B3, BD, BT clear). Checked rules: POPF setting TF traps
; after the *next* instruction, POPF clearing it still traps after itself,
; MOV SS suppresses the trap after it, INT n clears TF (its handler is not
; stepped, no trap after INT n itself, IRET restores TF).
%include "guest.inc"

SEL_CODE32   equ 0x08
SEL_DATA32   equ 0x10
SEL_CODE64   equ 0x18
MAX_LOG      equ 16

; DUMP_LOG base: prints the return offsets (relative to `base`) of the logged traps.
%macro DUMP_LOG 1
    xor ecx, ecx
%%next:
    cmp ecx, [step_count]
    jae %%done
    cmp ecx, MAX_LOG
    jae %%done
    mov eax, [step_log + 4 * ecx]
    sub eax, %1
    call put_hex32
    mov al, ' '
    call putc
    inc ecx
    jmp %%next
%%done:
    call put_nl
%endmacro

test_main:
    LOAD_GDT gdt_pointer, SEL_CODE32, SEL_DATA32
    ; IDT: #DB (1) and 0x40 through 32-bit interrupt gates.
    mov eax, db_handler32
    mov edi, idt32 + 1 * 8
    call set_gate32
    mov eax, int40_handler32
    mov edi, idt32 + 0x40 * 8
    call set_gate32
    lidt [idt32_pointer]

    ; ---- protected mode ----
    call reset_log
    pushfd
    or dword [esp], 0x100
    popfd                              ; TF set: the next instruction is the first stepped one
pm_steps:
    nop
    mov eax, 5
    add eax, eax
    mov bx, ss
    mov ss, bx                         ; no trap after MOV SS ...
    nop                                ; ... the next one follows this NOP
    int 0x40                           ; handler not stepped, no trap after INT
    nop
    pushfd
    and dword [esp], ~0x100
    popfd                              ; clears TF: still traps after itself
    nop
    nop
    CHECK_EQ eax, 10, "pm eax"
    CHECK_EQ [step_count], 9, "pm traps"
    CHECK_EQ [int40_count], 1, "pm int 0x40 calls"
    CHECK_EQ [dr6_seen], 0x4000, "pm dr6 bits"
    PRINT "pm trap offsets:"
    DUMP_LOG pm_steps

    ; ---- long mode: identity-map the first 4 MiB with 2 MiB pages ----
    mov dword [pml4], pdpt + 3
    mov dword [pdpt], page_directory + 3
    mov dword [page_directory + 0], 0x000083
    mov dword [page_directory + 8], 0x200083
    ENABLE_LONG_MODE pml4
    jmp SEL_CODE64:long64

bits 64
long64:
    mov eax, db_handler64
    mov edi, idt64 + 1 * 16
    call set_gate64
    mov eax, int40_handler64
    mov edi, idt64 + 0x40 * 16
    call set_gate64
    lidt [idt64_pointer]
    call reset_log64
    pushfq
    or qword [rsp], 0x100
    popfq
lm_steps:
    mov rax, 0x123456789
    push rax
    pop rbx
    int 0x40
    add rbx, rbx
    mov cx, ss
    mov ss, cx
    nop
    pushfq
    and qword [rsp], ~0x100
    popfq
    nop
    mov [lm_rbx], rbx
    shr rbx, 32
    mov [lm_rbx + 4], ebx
    ; Back to compatibility mode to print.
    push SEL_CODE32
    push compat32
    o64 retf

bits 32
compat32:
    CHECK_EQ [step_count], 9, "lm traps"
    CHECK_EQ [int40_count], 1, "lm int 0x40 calls"
    CHECK_EQ [dr6_seen], 0x4000, "lm dr6 bits"
    CHECK_EQ [lm_rbx], 0x468acf12, "lm rbx low"
    CHECK_EQ [lm_rbx + 4], 2, "lm rbx high"
    PRINT "lm trap offsets:"
    DUMP_LOG lm_steps
    ret

; EAX = handler, EDI = IDT entry: 32-bit interrupt gate, DPL 0.
set_gate32:
    mov word [edi], ax
    mov word [edi + 2], SEL_CODE32
    mov word [edi + 4], 0x8e00
    shr eax, 16
    mov word [edi + 6], ax
    ret

reset_log:
    mov dword [step_count], 0
    mov dword [int40_count], 0
    mov dword [dr6_seen], 0
    xor eax, eax
    mov dr6, eax
    ret

db_handler32:
    push eax
    push ecx
    mov ecx, [step_count]
    cmp ecx, MAX_LOG
    jae .full
    mov eax, [esp + 8]                 ; return EIP
    mov [step_log + 4 * ecx], eax
.full:
    inc dword [step_count]
    mov eax, dr6
    and eax, 0xe00f                    ; BT BS BD B3-B0
    or [dr6_seen], eax
    xor eax, eax
    mov dr6, eax
    pop ecx
    pop eax
    iretd

int40_handler32:
    inc dword [int40_count]
    iretd

bits 64
; EAX = handler (below 4 GiB), EDI = IDT entry: 64-bit interrupt gate, DPL 0.
set_gate64:
    mov word [rdi], ax
    mov word [rdi + 2], SEL_CODE64
    mov word [rdi + 4], 0x8e00
    shr eax, 16
    mov word [rdi + 6], ax
    mov qword [rdi + 8], 0
    ret

reset_log64:
    mov dword [step_count], 0
    mov dword [int40_count], 0
    mov dword [dr6_seen], 0
    xor eax, eax
    mov dr6, rax
    ret

db_handler64:
    push rax
    push rcx
    mov ecx, [step_count]
    cmp ecx, MAX_LOG
    jae .full
    mov rax, [rsp + 16]                ; return RIP
    mov [step_log + 4 * rcx], eax
.full:
    inc dword [step_count]
    mov rax, dr6
    and eax, 0xe00f
    or [dr6_seen], eax
    xor eax, eax
    mov dr6, rax
    pop rcx
    pop rax
    iretq

int40_handler64:
    inc dword [int40_count]
    iretq

bits 32
align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff              ; 0x08 code32
    dq 0x00cf92000000ffff              ; 0x10 data32
    dq 0x00209a0000000000              ; 0x18 code64
gdt_end:
gdt_pointer:
    dw gdt_end - gdt - 1
    dd gdt
idt32_pointer:
    dw 0x41 * 8 - 1
    dd idt32
idt64_pointer:
    dw 0x41 * 16 - 1
    dq idt64
align 4
step_count: dd 0
int40_count: dd 0
dr6_seen: dd 0
lm_rbx: dd 0, 0
step_log: times MAX_LOG dd 0

align 16
idt32: times 0x41 * 8 db 0
align 16
idt64: times 0x41 * 16 db 0
align 4096
pml4: times 4096 db 0
pdpt: times 4096 db 0
page_directory: times 4096 db 0

%include "guest_end.inc"
