; Virtual-8086 mode: IRETD from ring 0 enters real-mode-style code (IOPL 0)
; at 0800:0000 below 1 MiB. It loads DS like real mode, writes memory, prints
; through COM1 (ports allowed by the TSS I/O bitmap), then executes CLI, INT 0x21,
; IRET (in its own interrupt handler), IN from a denied port and HLT: each one
; raises #GP(0) to the ring-0 monitor, which emulates it (INT and IRET through
; the virtual-8086 IVT and stack) and resumes. HLT ends the test. The monitor
; records the extended frame of the first fault (ES, DS, FS, GS pushed; data
; segments null inside the handler).
%include "guest.inc"

SEL_CODE32   equ 0x08
SEL_DATA32   equ 0x10
SEL_TSS      equ 0x18
VM_CS        equ 0x0800            ; the virtual-8086 code is copied to linear 0x8000
VM_DS        equ 0x0900            ; data at linear 0x9000
VM_ES        equ 0x0a00
VM_SS        equ 0x0700            ; stack top at linear 0x7f00
FRAME        equ 20                ; EIP's offset in the #GP frame below the monitor's pushes

%define V(x) ((x) - vm_start)

test_main:
    LOAD_GDT gdt_pointer, SEL_CODE32, SEL_DATA32
    ; TSS descriptor (base is a label: built at run time), then LTR.
    mov eax, tss
    mov [gdt + SEL_TSS + 2], ax
    shr eax, 16
    mov [gdt + SEL_TSS + 4], al
    mov [gdt + SEL_TSS + 7], ah
    mov ax, SEL_TSS
    ltr ax
    ; #GP gate (vector 13): 32-bit interrupt gate, DPL 0.
    mov eax, monitor
    mov [idt + 13 * 8], ax
    mov word [idt + 13 * 8 + 2], SEL_CODE32
    mov word [idt + 13 * 8 + 4], 0x8e00
    shr eax, 16
    mov [idt + 13 * 8 + 6], ax
    lidt [idt_pointer]
    ; The virtual-8086 code below 1 MiB, and its IVT entry for INT 0x21.
    mov esi, vm_start
    mov edi, VM_CS << 4
    mov ecx, vm_end - vm_start
    rep movsb
    mov word [0x21 * 4], V(vm_int21)
    mov word [0x21 * 4 + 2], VM_CS

    mov [saved_esp], esp
    push dword 0                       ; GS
    push dword 0                       ; FS
    push dword VM_DS                   ; DS
    push dword VM_ES                   ; ES
    push dword VM_SS                   ; SS
    push dword 0x0f00                  ; ESP
    push dword 0x00020002              ; EFLAGS: VM, IOPL 0, IF 0
    push dword VM_CS                   ; CS
    push dword V(vm_entry)             ; EIP
    iretd

vm_done:
    mov ax, SEL_DATA32
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    CHECK_EQ [gp_count], 5, "#GP faults"
    CHECK_EQ [first_error], 0, "first error code"
    CHECK_EQ [first_eip], V(vm_cli), "first fault ip"
    CHECK_EQ [first_cs], VM_CS, "first fault cs"
    mov eax, [first_eflags]
    and eax, 0x00023200                ; VM, IOPL, IF
    CHECK_EQ eax, 0x00020000, "first fault eflags vm/iopl/if"
    CHECK_EQ [first_es], VM_ES, "frame es"
    CHECK_EQ [first_ds], VM_DS, "frame ds"
    CHECK_EQ [first_fs], 0, "frame fs"
    CHECK_EQ [first_gs], 0x1234, "frame gs"
    CHECK_EQ [handler_ds], 0, "monitor ds on entry"
    CHECK_EQ [handler_gs], 0, "monitor gs on entry"
    CHECK_EQ [cli_count], 1, "cli faults"
    CHECK_EQ [int_vector], 0x21, "int vector"
    CHECK_EQ [iret_count], 1, "iret faults"
    CHECK_EQ [in_port], 0x80, "denied in port"
    movzx eax, word [0x9010]
    CHECK_EQ eax, 0xbeef, "vm86 write ds:0010"
    movzx eax, word [0x9012]
    CHECK_EQ eax, VM_CS, "vm86 cs"
    movzx eax, word [0x9014]
    CHECK_EQ eax, 0x4321, "vm86 bx after int 0x21"
    movzx eax, word [0xa016]
    CHECK_EQ eax, 0x5678, "vm86 write es:0016"
    movzx eax, word [0x9018]
    CHECK_EQ eax, 0x0f00, "vm86 sp after int/iret"
    ret

; ---- the ring-0 monitor: #GP handler ----
monitor:
    push eax
    push ebx
    push ecx
    push edx
    mov eax, ds                        ; null after leaving virtual-8086 mode
    mov ecx, gs
    mov bx, SEL_DATA32
    mov ds, bx
    mov es, bx
    cmp dword [gp_count], 0
    jne .counted
    mov [handler_ds], eax
    mov [handler_gs], ecx
    mov eax, [esp + FRAME - 4]
    mov [first_error], eax
    mov eax, [esp + FRAME]
    mov [first_eip], eax
    mov eax, [esp + FRAME + 4]
    mov [first_cs], eax
    mov eax, [esp + FRAME + 8]
    mov [first_eflags], eax
    mov eax, [esp + FRAME + 20]
    mov [first_es], eax
    mov eax, [esp + FRAME + 24]
    mov [first_ds], eax
    mov eax, [esp + FRAME + 28]
    mov [first_fs], eax
    mov eax, [esp + FRAME + 32]
    mov [first_gs], eax
.counted:
    inc dword [gp_count]
    movzx ebx, word [esp + FRAME + 4]  ; CS
    shl ebx, 4
    movzx eax, word [esp + FRAME]      ; IP
    add ebx, eax                       ; linear address of the faulting instruction
    mov al, [ebx]
    cmp al, 0xfa
    je .cli
    cmp al, 0xcd
    je .int
    cmp al, 0xcf
    je .iret
    cmp al, 0xe4
    je .in
    cmp al, 0xf4
    je .hlt
    jmp FAIL
.cli:
    inc dword [cli_count]
    inc dword [esp + FRAME]
    jmp .resume
.in:
    movzx eax, byte [ebx + 1]
    mov [in_port], eax
    add dword [esp + FRAME], 2
    mov byte [esp + 12], 0xff          ; AL (saved EAX) = 0xff, as for an absent port
    jmp .resume
.int:                                  ; reflect into the virtual-8086 IVT
    movzx ecx, byte [ebx + 1]
    mov [int_vector], ecx
    sub word [esp + FRAME + 12], 6
    movzx edx, word [esp + FRAME + 16] ; SS
    shl edx, 4
    movzx eax, word [esp + FRAME + 12] ; SP
    add edx, eax
    mov ax, [esp + FRAME + 8]
    mov [edx + 4], ax                  ; FLAGS
    mov ax, [esp + FRAME + 4]
    mov [edx + 2], ax                  ; CS
    mov ax, [esp + FRAME]
    add ax, 2
    mov [edx], ax                      ; IP after INT n
    movzx eax, word [ecx * 4]
    mov [esp + FRAME], eax
    movzx eax, word [ecx * 4 + 2]
    mov [esp + FRAME + 4], eax
    jmp .resume
.iret:                                 ; pop IP, CS, FLAGS from the virtual-8086 stack
    inc dword [iret_count]
    movzx edx, word [esp + FRAME + 16]
    shl edx, 4
    movzx eax, word [esp + FRAME + 12]
    add edx, eax
    movzx eax, word [edx]
    mov [esp + FRAME], eax
    movzx eax, word [edx + 2]
    mov [esp + FRAME + 4], eax
    mov ax, [edx + 4]
    and ax, 0x0fff                     ; IOPL stays 0
    mov [esp + FRAME + 8], ax
    add word [esp + FRAME + 12], 6
    jmp .resume
.hlt:
    mov esp, [saved_esp]
    jmp vm_done
.resume:
    pop edx
    pop ecx
    pop ebx
    pop eax
    add esp, 4                         ; error code
    iretd

; ---- virtual-8086 code (copied to VM_CS:0) ----
bits 16
vm_start:
vm_entry:
    mov word [0x10], 0xbeef            ; DS from the IRET frame
    mov ax, cs
    mov [0x12], ax
    mov ax, 0x1234
    mov gs, ax                         ; a real-mode style segment load
    mov ax, VM_ES
    mov es, ax
    mov word [es:0x16], 0x5678
    mov dx, 0x3f8                      ; COM1 is allowed by the I/O bitmap
    mov al, 'V'
    out dx, al
    mov al, 10
    out dx, al
vm_cli:
    cli                                ; IOPL 0: #GP to the monitor
    int 0x21                           ; #GP: the monitor reflects it to vm_int21
    mov [0x14], bx
    mov [0x18], sp
    in al, 0x80                        ; denied by the I/O bitmap: #GP
    hlt                                ; #GP: the monitor ends the test
vm_int21:
    mov bx, 0x4321
    iret                               ; #GP: the monitor emulates it
vm_end:

bits 32
align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff              ; 0x08 code32
    dq 0x00cf92000000ffff              ; 0x10 data32
    dq 0x0000890000000000 | (tss_end - tss - 1)  ; 0x18 TSS (base filled in at run time)
gdt_end:
gdt_pointer:
    dw gdt_end - gdt - 1
    dd gdt
idt_pointer:
    dw 0x20 * 8 - 1
    dd idt
align 4
saved_esp: dd 0
gp_count: dd 0
first_error: dd 0
first_eip: dd 0
first_cs: dd 0
first_eflags: dd 0
first_es: dd 0
first_ds: dd 0
first_fs: dd 0
first_gs: dd 0
handler_ds: dd 0xffffffff
handler_gs: dd 0xffffffff
cli_count: dd 0
int_vector: dd 0
iret_count: dd 0
in_port: dd 0

align 16
idt: times 0x20 * 8 db 0
align 16
tss:
    dd 0                               ; back link
    dd monitor_stack_top               ; ESP0
    dd SEL_DATA32                      ; SS0
    times 22 dd 0
    dw 0                               ; T
    dw iomap - tss                     ; I/O map base
iomap:
    times 0x7f db 0xff                 ; ports 0x000-0x3f7 denied
    db 0                               ; 0x3f8-0x3ff (COM1) allowed
    db 0xff
tss_end:
align 16
monitor_stack: times 4096 db 0
monitor_stack_top:

%include "guest_end.inc"
