// localStorage that never throws: in private mode, or with storage off, the page keeps working
// and simply forgets.

export const storage = {
  get: (key) => { try { return localStorage.getItem(key); } catch { return null; } },
  set: (key, value) => { try { localStorage.setItem(key, value); } catch { /* private mode: keep going */ } },
};
