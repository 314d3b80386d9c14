-- Cross-application listings for operators (GET /api/v1/admin/chats and
-- /admin/messages): newest first by (created_at, id), paged with a keyset
-- cursor, so each page is one index range scan however large the tables are.
ALTER TABLE chats ADD KEY chats_created_idx (created_at, id);
ALTER TABLE messages ADD KEY messages_created_idx (created_at, id);
