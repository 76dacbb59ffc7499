; 8259 PIC pair and 8254 PIT: initialise both PICs (vectors 0x20/0x28),
; read back IMR/IRR/ISR, take PIT channel 0 (mode 2, 100 Hz) interrupts
; through an IDT while waiting in HLT, non-specific EOI, auto-EOI mode,
; the PIT read-back status and counter latch, and channel 2 gated through
; port 0x61 with OUT2 polled there (as calibration loops do).
%include "guest.inc"

PIC1_CMD  equ 0x20
PIC1_DATA equ 0x21
PIC2_DATA equ 0xa1
PIT_CH0   equ 0x40
PIT_CH2   equ 0x42
PIT_CMD   equ 0x43
PORT_B    equ 0x61
COUNT_100HZ equ 11932

%macro OUTB 2
    mov al, %2
    out %1, al
%endmacro

test_main:
    ; Own GDT and IDT (Multiboot leaves GDTR unspecified).
    lgdt [gdt_desc]
    jmp 0x08:.reload_cs
.reload_cs:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    FILL_IDT unexpected_interrupt
    mov edi, idt + 0x20 * 8
    mov eax, timer_interrupt
    call set_gate
    lidt [idt_desc]

    INIT_PICS 0xfe, 0xff                ; only IRQ0
    in al, PIC1_DATA
    movzx eax, al
    CHECK_EQ eax, 0xfe, "master imr"
    in al, PIC2_DATA
    movzx eax, al
    CHECK_EQ eax, 0xff, "slave imr"
    OUTB PIC1_CMD, 0x0b               ; OCW3: read ISR
    in al, PIC1_CMD
    movzx eax, al
    CHECK_EQ eax, 0, "isr idle"

    ; PIT channel 0: lobyte/hibyte, mode 2, 100 Hz.
    OUTB PIT_CMD, 0x34
    OUTB PIT_CH0, COUNT_100HZ & 0xff
    OUTB PIT_CH0, COUNT_100HZ >> 8
    ; Read-back of channel 0's status: access 3, mode 2, binary, count loaded.
    OUTB PIT_CMD, 0xe2
    in al, PIT_CH0
    movzx eax, al
    and eax, 0x7f
    CHECK_EQ eax, 0x34, "pit status"
    ; Counter latch: the count lies within the period.
    OUTB PIT_CMD, 0x00
    in al, PIT_CH0
    mov ah, al
    in al, PIT_CH0
    xchg al, ah
    movzx eax, ax
    cmp eax, COUNT_100HZ
    setbe dl
    test eax, eax
    setnz al
    and al, dl
    movzx eax, al
    CHECK_EQ eax, 1, "pit latch in range"

    ; Five timer interrupts, waiting in HLT.
    mov dword [ticks], 0
    sti
.wait:
    hlt
    cmp dword [ticks], 5
    jb .wait
    cli
    mov eax, [ticks]
    cmp eax, 5
    setae al
    movzx eax, al
    CHECK_EQ eax, 1, "five ticks"
    CHECK_EQ [isr_in_handler], 1, "isr in handler"
    CHECK_EQ [isr_after_eoi], 0, "isr after eoi"

    ; Auto-EOI: re-initialise the master with ICW4.AEOI; nothing stays in service.
    OUTB PIC1_CMD, 0x11
    OUTB PIC1_DATA, 0x20
    OUTB PIC1_DATA, 0x04
    OUTB PIC1_DATA, 0x03
    OUTB PIC1_DATA, 0xfe
    mov dword [ticks], 0
    mov dword [auto_eoi], 1
    sti
.wait2:
    hlt
    cmp dword [ticks], 2
    jb .wait2
    cli
    CHECK_EQ [isr_in_handler], 0, "auto eoi isr"

    ; Mask everything: interrupts stop arriving (IRR may still latch).
    OUTB PIC1_DATA, 0xff
    mov dword [ticks], 0
    sti
    mov ecx, 200000
.spin:
    loop .spin
    cli
    CHECK_EQ [ticks], 0, "masked ticks"

    ; Channel 2 in mode 0 with the gate low: OUT2 stays low; raising the
    ; gate through port 0x61 starts the count and OUT2 rises at zero.
    in al, PORT_B
    and al, 0xfc
    out PORT_B, al                     ; gate off, speaker off
    OUTB PIT_CMD, 0xb0                 ; channel 2, lobyte/hibyte, mode 0
    OUTB PIT_CH2, 0xa9
    OUTB PIT_CH2, 0x04                 ; 1193 clocks: about 1 ms
    in al, PORT_B
    movzx eax, al
    and eax, 0x21
    CHECK_EQ eax, 0, "out2 low, gate off"
    in al, PORT_B
    or al, 1
    out PORT_B, al
    mov ecx, 100000000
.poll:
    in al, PORT_B
    test al, 0x20
    jnz .risen
    loop .poll
.risen:
    in al, PORT_B
    movzx eax, al
    and eax, 0x21
    CHECK_EQ eax, 0x21, "out2 high after count"
    ret

timer_interrupt:
    push eax
    inc dword [ticks]
    mov al, 0x0b
    out PIC1_CMD, al
    in al, PIC1_CMD
    and eax, 1
    mov [isr_in_handler], eax
    cmp dword [auto_eoi], 0
    jne .done
    mov al, 0x20
    out PIC1_CMD, al                   ; non-specific EOI
    in al, PIC1_CMD
    and eax, 1
    mov [isr_after_eoi], eax
.done:
    pop eax
    iret

unexpected_interrupt:
    PRINT "unexpected interrupt"
    jmp FAIL

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff              ; 0x08: flat 32-bit code
    dq 0x00cf92000000ffff              ; 0x10: flat data
gdt_desc:
    dw gdt_desc - gdt - 1
    dd gdt
align 8
idt_desc:
    dw 256 * 8 - 1
    dd idt
align 4
ticks: dd 0
isr_in_handler: dd 0
isr_after_eoi: dd 1
auto_eoi: dd 0
align 8
idt: times 256 dq 0

%include "guest_end.inc"
