package handler

import (
	"sort"
	"strings"
)

// Redacted replaces secrets in Redact's output.
const Redacted = "[REDACTED]"

// Redact replaces every non-empty secret in text with [REDACTED], longest
// first, so a secret that contains another is not left half shown.
func Redact(text string, secrets []string) string {
	sorted := make([]string, 0, len(secrets))
	for _, secret := range secrets {
		if secret != "" {
			sorted = append(sorted, secret)
		}
	}
	sort.SliceStable(sorted, func(i, j int) bool { return len(sorted[i]) > len(sorted[j]) })
	for _, secret := range sorted {
		text = strings.ReplaceAll(text, secret, Redacted)
	}
	return text
}
