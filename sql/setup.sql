-- Prepares a database for rowcast's sql-changes function: turns on change tracking for the
-- database and creates a sample dbo.Users table with it enabled. The Azure SQL trigger needs
-- both, and a primary key on the table. Run it once, e.g. with sqlcmd or the Azure portal's
-- query editor, connected to the database named in SqlConnectionString.

IF NOT EXISTS (SELECT 1 FROM sys.change_tracking_databases WHERE database_id = DB_ID())
BEGIN
    DECLARE @enable nvarchar(400) = N'ALTER DATABASE ' + QUOTENAME(DB_NAME())
        + N' SET CHANGE_TRACKING = ON (CHANGE_RETENTION = 2 DAYS, AUTO_CLEANUP = ON);';
    EXEC (@enable);
END;
GO

IF OBJECT_ID(N'dbo.Users', N'U') IS NULL
BEGIN
    CREATE TABLE dbo.Users (
        Id        int            NOT NULL CONSTRAINT PK_Users PRIMARY KEY,
        OwnerId   nvarchar(64)   NOT NULL,
        UserName  nvarchar(128)  NOT NULL,
        Email     nvarchar(256)  NULL,
        Region    nvarchar(32)   NULL,
        Visits    int            NOT NULL CONSTRAINT DF_Users_Visits DEFAULT (0)
    );
END;
GO

IF NOT EXISTS (SELECT 1 FROM sys.change_tracking_tables WHERE object_id = OBJECT_ID(N'dbo.Users'))
    ALTER TABLE dbo.Users ENABLE CHANGE_TRACKING;
GO

-- The trigger keeps its state in the az_func schema and creates it on first start. The
-- login in SqlConnectionString needs rights to create it, or an administrator can create it
-- ahead of time:
--   CREATE SCHEMA az_func;  GRANT ALTER, CONTROL ON SCHEMA::az_func TO [your login];

-- A change to try the pipeline with once `func start` runs:
--   INSERT INTO dbo.Users (Id, OwnerId, UserName, Email, Region) VALUES (1, N'12345', N'ann', N'ann@example.com', N'eu');
--   UPDATE dbo.Users SET Visits = Visits + 1 WHERE Id = 1;
