; A 64 KiB firmware image for qemu-system-x86_64 -machine pc -bios: just enough
; of a "guest" to drive an ivshmem-doorbell device in PCI slot 2 without an OS.
;
; 1. Maps BAR0 (registers) at 0xfe000000, BAR1 (MSI-X table) at 0xfe001000 and
;    BAR2 (shared memory) at 0xfd000000, enables memory space and bus mastering.
; 2. Points MSI-X vector 0 at guest RAM 0x9000 with data "MSIX" and enables MSI-X,
;    so that an interrupt from a peer becomes a visible memory write.
; 3. Waits until a host peer stores a Doorbell value (peer << 16 | vector) in
;    shared memory word 0, copies IVPosition to word 2, stores "KILN" in word 3
;    and rings the doorbell until the peer stores "ACK!" in word 5 (QEMU
;    ignores doorbells for peers whose connect notice it has not processed yet).
; 4. Waits for the MSI-X write of vector 0 and copies it to shared memory word 4.
bits 16
org 0                           ; the ROM's last 64 KiB appear at 0xf0000

start:
    cli
    o32 lgdt [cs:gdt_descriptor]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp dword 0x08:(0xf0000 + protected)

bits 32
protected:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x7000             ; a stack in RAM (the ROM ignores writes)
    mov ebx, 0x80001010         ; bus 0, device 2, BAR0
    mov ecx, 0xfe000000
    call config_write
    mov ebx, 0x80001014         ; BAR1
    mov ecx, 0xfe001000
    call config_write
    mov ebx, 0x80001018         ; BAR2, 64-bit: low then high half
    mov ecx, 0xfd000000
    call config_write
    mov ebx, 0x8000101c
    xor ecx, ecx
    call config_write
    mov ebx, 0x80001004         ; command: memory space and bus master
    mov ecx, 6
    call config_write

    mov dword [0xfe001000], 0x9000   ; MSI-X entry 0: address low, high, data, control
    mov dword [0xfe001004], 0
    mov dword [0xfe001008], 'MSIX'
    mov dword [0xfe00100c], 0
    mov ebx, 0x80001034         ; walk the capability list to MSI-X (ID 0x11)
    call config_read
find_msix:
    and eax, 0xfc
    jz halt
    mov esi, 0x80001000
    or esi, eax
    mov ebx, esi
    call config_read
    cmp al, 0x11
    je enable_msix
    shr eax, 8
    jmp find_msix
enable_msix:
    or eax, 0x80000000          ; Message Control bit 15: enable
    and eax, 0xbfffffff         ; bit 14: function mask off
    mov ebx, esi
    mov ecx, eax
    call config_write

wait_for_request:
    mov eax, [0xfd000000]
    test eax, eax
    jz wait_for_request
    mov edx, [0xfe000008]       ; IVPosition: our peer ID
    mov [0xfd000008], edx
    mov dword [0xfd00000c], 'KILN'
ring:
    mov [0xfe00000c], eax       ; Doorbell
    mov ecx, 0x400000
wait_for_ack:
    cmp dword [0xfd000014], 'ACK!'
    je wait_for_interrupt
    dec ecx
    jnz wait_for_ack
    jmp ring
wait_for_interrupt:
    mov eax, [0x9000]
    test eax, eax
    jz wait_for_interrupt
    mov [0xfd000010], eax
halt:
    hlt
    jmp halt

config_write:                   ; ebx = config address, ecx = value
    mov dx, 0xcf8
    mov eax, ebx
    out dx, eax
    mov dx, 0xcfc
    mov eax, ecx
    out dx, eax
    ret

config_read:                    ; ebx = config address; returns eax
    mov dx, 0xcf8
    mov eax, ebx
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    ret

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff       ; flat 32-bit code
    dq 0x00cf92000000ffff       ; flat 32-bit data
gdt_descriptor:
    dw gdt_descriptor - gdt - 1
    dd 0xf0000 + gdt

times 0xfff0 - ($ - $$) db 0
bits 16
reset_vector:
    jmp 0xf000:start
times 0x10000 - ($ - $$) db 0
