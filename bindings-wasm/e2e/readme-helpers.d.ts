// What the README's TypeScript blocks call but do not define (an app's own UI helpers), and Vite's
// `import.meta.env` (the Vite app block). Used by readme-snippets.mjs only.
declare function toast(title?: string | null, body?: string | null): void;
declare function setBadge(count: number): void;
declare function showStatus(kind: string): void;
declare function refetch(stream: string): void;
interface ImportMeta {
  readonly env: Record<string, string | undefined>;
}
