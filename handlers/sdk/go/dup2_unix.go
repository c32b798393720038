//go:build unix && !linux

package handler

import "syscall"

// dup2 is dup2(2).
func dup2(oldfd, newfd int) error { return syscall.Dup2(oldfd, newfd) }
