package handler

import "syscall"

// dup2 is dup2(2); Linux on arm64 and riscv64 has only dup3.
func dup2(oldfd, newfd int) error { return syscall.Dup3(oldfd, newfd, 0) }
