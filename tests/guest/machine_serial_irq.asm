; COM1 interrupts through the PIC on IRQ4: the THR-empty interrupt (and its
; acknowledge by reading IIR), then a received character in loopback raising
; the receive-data interrupt, handled through an IDT.
%include "guest.inc"

PIC1_CMD  equ 0x20

%macro OUTB 2
    mov dx, %1
    mov al, %2
    out dx, al
%endmacro

test_main:
    lgdt [gdt_desc]
    jmp 0x08:.reload_cs
.reload_cs:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    FILL_IDT unexpected_interrupt
    mov edi, idt + 0x24 * 8
    mov eax, com1_interrupt
    call set_gate
    lidt [idt_desc]

    INIT_PICS 0xef, 0xff                ; only IRQ4

    ; THR empty: enabling the interrupt with THR empty raises it once.
    mov dword [thr_count], 0
    OUTB COM1 + 1, 0x02
    sti
    mov ecx, 10000000
.wait_thr:
    cmp dword [thr_count], 0
    jne .thr_done
    loop .wait_thr
.thr_done:
    cli
    OUTB COM1 + 1, 0x00
    mov eax, [thr_count]
    cmp eax, 1
    setae al
    movzx eax, al
    CHECK_EQ eax, 1, "thr empty interrupt"

    ; Loopback with OUT2, FIFO trigger level 1, receive interrupt enabled.
    OUTB COM1 + 2, 0x07
    OUTB COM1 + 4, 0x18
    OUTB COM1 + 1, 0x01
    OUTB COM1, 'Q'
    sti
    mov ecx, 10000000
.wait_rx:
    cmp dword [rx_count], 0
    jne .rx_done
    loop .wait_rx
.rx_done:
    cli
    OUTB COM1 + 1, 0x00
    OUTB COM1 + 4, 0x03
    OUTB COM1 + 2, 0xc7
    CHECK_EQ [rx_count], 1, "receive interrupts"
    CHECK_EQ [rx_byte], 'Q', "received byte"
    mov eax, [last_iir]
    and eax, 0x07                      ; receive data or character timeout
    CHECK_EQ eax, 0x04, "iir in handler"
    ret

com1_interrupt:
    push eax
    push edx
    mov dx, COM1 + 2
    in al, dx                          ; identify (acknowledges THR empty)
    movzx eax, al
    test eax, 1
    jnz .eoi
    mov edx, eax
    and edx, 0x0e
    cmp edx, 0x02
    jne .not_thr
    inc dword [thr_count]
    jmp .eoi
.not_thr:
    mov [last_iir], eax
    mov dx, COM1
    in al, dx
    movzx eax, al
    mov [rx_byte], eax
    inc dword [rx_count]
.eoi:
    mov al, 0x20
    out PIC1_CMD, al
    pop edx
    pop eax
    iret

unexpected_interrupt:
    PRINT "unexpected interrupt"
    jmp FAIL

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff
    dq 0x00cf92000000ffff
gdt_desc:
    dw gdt_desc - gdt - 1
    dd gdt
align 8
idt_desc:
    dw 256 * 8 - 1
    dd idt
align 4
thr_count: dd 0
rx_count: dd 0
rx_byte: dd 0
last_iir: dd 0
align 8
idt: times 256 dq 0

%include "guest_end.inc"
