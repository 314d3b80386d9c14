-- The default search backend becomes a term index scoped by chat, written by
-- the search indexer after each flush (off the flush path), and the InnoDB
-- FULLTEXT index of migration 2 goes: InnoDB maintained it inside every
-- flush's transaction, where it cut the flush rate to 0.16x of the rate
-- without it at a million stored messages (BENCHMARKS.md, figure 8), and
-- each search ranked every matching message of every chat before keeping
-- the chat's. Dropping a FULLTEXT index is fast (InnoDB drops its auxiliary
-- tables). Existing messages are indexed by `chat-api reindex`; new ones as
-- they are flushed. (The body keeps migration 2's case-insensitive
-- collation: changing it back would rebuild the whole table for nothing.)
ALTER TABLE messages DROP INDEX IF EXISTS messages_body_fulltext;

-- Postings: one row per distinct term of each indexed message. The primary
-- key starts with the chat, so a search reads only its chat's postings of
-- its terms. `term` is the first 8 bytes of the SHA-256 of the term's
-- normalized form (src/store/search/terms.rs); `length` is the message's
-- length in terms, repeated here so that ranking needs no second read.
CREATE TABLE search_postings (
    chat_id BIGINT UNSIGNED NOT NULL,
    term    BIGINT UNSIGNED NOT NULL,
    number  BIGINT NOT NULL,
    tf      SMALLINT UNSIGNED NOT NULL,
    length  INT UNSIGNED NOT NULL,
    PRIMARY KEY (chat_id, term, number)
) ENGINE = InnoDB;

-- One row per indexed message: its length and its distinct term hashes
-- (8 bytes each, big-endian), so that an edit or a delete removes exactly its
-- postings.
CREATE TABLE search_documents (
    chat_id BIGINT UNSIGNED NOT NULL,
    number  BIGINT NOT NULL,
    length  INT UNSIGNED NOT NULL,
    terms   MEDIUMBLOB NOT NULL,
    PRIMARY KEY (chat_id, number)
) ENGINE = InnoDB;

-- Per chat: indexed messages and their total length in terms (BM25's N and
-- average length), and the application (to delete an application's index).
CREATE TABLE search_chats (
    chat_id        BIGINT UNSIGNED NOT NULL,
    application_id BIGINT UNSIGNED NOT NULL,
    documents      BIGINT NOT NULL,
    length         BIGINT NOT NULL,
    PRIMARY KEY (chat_id),
    KEY search_chats_application (application_id)
) ENGINE = InnoDB;
