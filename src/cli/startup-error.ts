// In a module of its own: main.ts needs the class from its first moment, and process-support.ts
// (which re-exports it) loads the observability and stores modules with it, a wait during
// which SIGTERM still has its default action (see held-signals.ts).

/** A failure while a process starts (exit 1, the message printed as is). */
export class StartupError extends Error {}
